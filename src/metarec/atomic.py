"""Atomic file writes: a temporary sibling, renamed onto the target only once complete.

Every artifact metarec writes (CSV outputs, reports, plots, caches, checkpoints, Parquet
logs) goes through :func:`atomic_path`, so a crash or a bad input never leaves a
half-written file, and a failed write leaves an existing file untouched. ``mkstemp``
creates its file with mode 0600; the finished file gets the mode a plain ``open`` would
give it (0666 minus the umask), so overwriting a shared output does not make it private.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from metarec.types import MetarecError


def _umask() -> int:
    # os.umask can only be read by setting it; put it straight back
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def public_mode(path: str | Path, directory: bool = False) -> None:
    """Give ``path`` the mode ``open``/``mkdir`` would: 0666 (0777 for a folder) - umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def writable_target(path: str | Path) -> Path:
    """The file a write to ``path`` should replace: a symlink's target (the link stays a
    link, as ``open`` would write through it), else ``path``. A folder, or a device, FIFO
    or socket (``/dev/null``, ``/dev/stdout``), is a one-line :class:`MetarecError`:
    renaming a finished file onto one would replace the node itself with a plain file."""
    path = Path(path)
    stream = _names_a_stream(path)
    if stream is not None:
        # /dev/stdout redirected to a file resolves, through /proc/self/fd/1, to that
        # file: a finished file renamed over it replaced the log the shell appended to
        # (probe 137)
        raise MetarecError(
            f"{path} names {stream}, not a file; give a file path to write to (predict and "
            "recommend write CSV to stdout with --out -)"
        )
    if path.is_dir():
        raise MetarecError(f"{path} is a directory; give a file path to write to")
    if path.exists() and not path.is_file():
        raise MetarecError(
            f"{path} is not a regular file (a device, pipe or socket); give a file path to write to"
        )
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    return path


_STREAM_LINK = re.compile(r"^/(?:proc/(?:self|thread-self|\d+)(?:/task/\d+)?|dev)/fd/\d+$")


def _names_a_stream(path: Path) -> str | None:
    """What ``path`` reaches a file descriptor through (``/dev/stdout``, ``/dev/fd/N``,
    ``/proc/self/fd/N``, or a symlink to one), None for an ordinary path. Each link is
    followed by hand: resolving the whole chain lands on the descriptor's file."""
    hops = 0
    current = os.path.abspath(path)
    while hops < 40:  # the kernel's own limit on a chain of links
        if _STREAM_LINK.match(current) or current in ("/dev/stdin", "/dev/stdout", "/dev/stderr"):
            return f"a file descriptor ({current})"
        try:
            target = os.readlink(current)
        except OSError:  # not a link (or missing): the chain ends at an ordinary path
            return None
        current = os.path.normpath(os.path.join(os.path.dirname(current), target))
        hops += 1
    return None


def refuse_stdout_folder(out: str | Path, what: str) -> None:
    """``--out -`` is predict's and recommend's stdout; ``what`` (a RUN, an experiment's
    output, a split) is written as a folder, and went into one named "-"."""
    if str(out) == "-":
        raise MetarecError(
            f"--out -: {what} is written as a folder, which cannot go to stdout; give a folder path"
        )


def nearest_existing(path: str | Path) -> Path:
    """``path`` itself or its nearest ancestor that exists (a symlink, dangling or not,
    counts as existing): where a write that makes the missing folders first lands."""
    probe = Path(path)
    while not (probe.exists() or probe.is_symlink()) and probe != probe.parent:
        probe = probe.parent
    return probe


def write_refused(folder: Path, name: str) -> str | None:
    """Why ``folder`` takes no new file, or None: a real staging file for target ``name``
    is made and removed there (os.access says yes to root everywhere, so a read-only
    mount, an immutable folder or /proc passed it)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=staging_prefix(name), dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        return str(err.strerror or err)
    return None


def check_can_create(path: str | Path) -> None:
    """Before any work: ``path`` (a file or folder to be written, its missing parent
    folders made on the way) can be created. The nearest existing ancestor must be a
    folder in which a file can really be made (:func:`write_refused`): a read-only or
    immutable folder failed only at the write, after a whole training run (``fit``,
    ``update``) or a scoring pass (``predict``), naming a hidden staging file. A one-line
    :class:`MetarecError` names ``path``."""
    path = Path(path)
    probe = nearest_existing(path.parent)
    if not probe.is_dir():
        raise MetarecError(f"cannot write {path}: {probe} is not a folder")
    why = write_refused(probe, path.name)
    if why is not None:
        raise MetarecError(f"cannot write {path} in {probe}: {why}")


# Staging files and folders carry their writer's host and pid in the name
# (".NAME.~host-1234~XXXX"): a writer killed with SIGKILL leaves one behind, and the next
# write of the same NAME on this host removes those whose process is gone. A live pid
# (or one reused since) is left alone, and so is another host's (a shared filesystem).
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64] or "host"


def staging_prefix(name: str) -> str:
    """The name prefix of this process's staging files/folders for target ``name``."""
    return f".{name}.~{_HOST}-{os.getpid()}~"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def sweep_staging(parent: str | Path, name: str) -> int:
    """Remove the staging files and folders of target ``name`` in ``parent`` that writers
    on this host left when they died (their pid is gone); returns how many. Best effort:
    anything that cannot be listed or removed is left."""
    mine = re.compile(rf"^\.{re.escape(name)}\.~{re.escape(_HOST)}-(\d+)~")
    removed = 0
    try:
        entries = list(Path(parent).glob(f".{glob.escape(name)}.~*"))
    except OSError:
        return 0
    for entry in entries:
        m = mine.match(entry.name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
    return removed


def staging_dir(parent: str | Path, name: str) -> Path:
    """A fresh staging folder for target ``name`` in ``parent`` (mode as ``mkdir`` gives),
    after sweeping what dead writers of ``name`` left there."""
    sweep_staging(parent, name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=staging_prefix(name), dir=parent))
    except OSError as err:
        # named after what was asked for: the CLI printed the staging folder's own name
        # ("file not found: /proc/.x.~vm-11720~f6hpmia2" for --out /proc/x)
        raise MetarecError(f"cannot write {name} in {parent}: {err.strerror or err}") from None
    public_mode(tmp, directory=True)  # mkdtemp makes it 0700
    return tmp


LOCK_NAME = ".metarec.lock"


@contextmanager
def exclusive_folder(out: str | Path, what: str) -> Iterator[Path]:
    """Hold ``out`` (made if missing) for one writer while the block runs: a second
    ``what`` given the same folder meanwhile is refused with a one-line
    :class:`MetarecError` naming the holder's pid, where both ran and the later one's files
    replaced the earlier's one by one (results.json of one run beside report.md of
    the other). An exclusive ``flock`` on ``out/.metarec.lock``, removed at the end, and
    with it each folder this made (``out`` and missing parents) that the block left
    empty. A filesystem without ``flock`` holds nothing: the block runs as before."""
    import fcntl

    out = Path(out)
    # the folders this makes, as real paths: mkdir(parents=True) makes each missing
    # folder on the way, NEW/.. included by name (NEW/../mine makes NEW). Judged by name,
    # a failed run into NEW/deeper left NEW, and into NEW/../mine (mine an empty folder
    # of the user's) removed mine and left NEW
    made = []
    for up in (out, *out.parents):
        real = Path(os.path.realpath(up))
        if not real.exists() and real not in made:
            made.append(real)
    made.sort(key=lambda p: len(p.parts), reverse=True)  # deepest first
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    fd: int | None = None
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise MetarecError(
                f"{out} is being written by another {what} (pid {holder}); wait for it to "
                "finish or give another folder"
            ) from None
        except OSError:  # no flock here (some network filesystems): nothing to hold
            os.close(fd)
            fd = None
            with contextlib.suppress(OSError):
                lock.unlink()  # it was left in the folder, where no run reads it
            break
        try:
            # the holder before us may have removed the file after we opened it: a lock on
            # a removed file holds nothing, so take the one now at the path
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    if fd is not None:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    try:
        yield out
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                lock.unlink()
            os.close(fd)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: nothing was written there


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``.

    The parent folder is created. A symlink is written through (its target is replaced);
    a target that is a folder or a special file is a one-line :class:`MetarecError`
    before anything is written (:func:`writable_target`). On an exception the temporary file
    is removed and ``path`` is left as it was.
    """
    path = writable_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_staging(path.parent, path.name)
        fd, name = tempfile.mkstemp(
            dir=path.parent, prefix=staging_prefix(path.name), suffix=suffix
        )
    except OSError as err:
        # named after what was asked for, not the hidden staging file ("Operation not
        # permitted: .P.csv.~host-8261~ckcc4kk1.tmp"), nor "File exists" for a parent
        # that is a file
        check_can_create(path)  # the precise reason, where it finds one
        raise MetarecError(f"cannot write {path}: {err.strerror or err}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        public_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_dir(new: Path, out: Path, aside: str, inner: str, replace: bool = True) -> None:
    """Move the complete folder ``new`` onto ``out``. An existing ``out`` is first moved
    aside, to ``out.parent / .{out.name}{aside}XXXX / inner``, and removed once ``new`` is
    in place. A folder cannot be renamed over a non-empty one, so this is two renames: if
    the second fails or is interrupted (Ctrl-C, SIGTERM), the previous folder is put back
    before the error goes on; a ``kill -9`` between them leaves it aside. Errors of the
    renames themselves (another writer's folder in the way: ENOTEMPTY, EEXIST) reach the
    caller as they are.

    ``replace=False``: ``out`` was absent or empty when the caller checked, and what
    another process put there since is not replaced (one rename, which fails with
    ENOTEMPTY onto a non-empty folder): two `split`s to one new folder both said they
    wrote it, and one split silently replaced the other (probe 145)."""
    if not replace or not out.exists():
        try:
            os.rename(new, out)  # onto nothing, or onto an empty folder
            return
        except OSError as err:
            if not replace or err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # another writer's folder appeared since out.exists(): set it aside below
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}{aside}", dir=out.parent))
    try:
        # FileNotFoundError: another writer set `out` aside in the meantime; there is
        # nothing to keep, and the rename below decides who is last
        with contextlib.suppress(FileNotFoundError):
            os.replace(out, old / inner)
        os.replace(new, out)
    except BaseException:
        # which renames happened is read from the disk, not from how far the code got: a
        # signal lands between a rename and the next line, so a Ctrl-C just after the
        # first left the previous RUN aside, with nothing at `out` (probe 137)
        if os.path.lexists(new):  # the new folder never moved in: the previous one back
            with contextlib.suppress(OSError):
                if not os.path.lexists(out):
                    os.replace(old / inner, out)
            if os.path.lexists(out):
                # put back, or superseded by another writer's complete folder: either
                # way nothing aside is needed (an empty .NAME.old.XXXX was left behind
                # each time another writer won, probe 145)
                shutil.rmtree(old, ignore_errors=True)
        else:  # it did, just before the interruption: the swap is whole
            shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (``fsync``: flush to disk before the rename)."""
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())


def save_safetensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> None:
    """safetensors' ``save_file``, its I/O failures raised as the ``OSError`` every other
    write raises: it raises its own ``SafetensorError`` (not an OSError), so a full disk
    while writing a RUN or a checkpoint was a traceback and exit 1 where the CLI gives
    one line and exit 2 (probe 159). Its message names the OS errno ("os error 28")."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as err:
        code = re.search(r"os error (\d+)", str(err))
        if code is None:
            raise
        num = int(code.group(1))
        raise OSError(num, os.strerror(num), str(path)) from err


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def finite_json(obj: Any) -> Any:
    """``obj`` with NaN / ±inf floats as None, so ``json.dumps`` writes strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> None:
    """Strict JSON (NaN as null), written atomically."""
    write_text(path, json.dumps(finite_json(obj), indent=indent, allow_nan=False) + "\n")
