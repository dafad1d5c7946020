"""RUN directories: what ``fit`` writes and ``predict`` / ``recommend`` / ``serve`` load.

Layout (no pickle; loading never executes code)::

    RUN/
      manifest.json      format version, metarec version, file list with sha256
      config.json        the full typed config the run was made with
      model.safetensors  every tensor (model params, feature matrices, ...)
      ids/<name>.parquet raw-id tables (one column ``id``; row i is index i)
      meta.json          anything else JSON-able (encoder fingerprint, dataset info, metrics)

Every file carries the RUN's id (``run_id``: the manifest's, meta.json's top-level key, the
safetensors header's and each parquet schema's metadata; config.json is tied by its sha256
in meta.json, ``config_sha256``, since a config.json with a key it does not know is refused
by the metarec before this one), so files put together from two RUNs are refused even when
the manifest's checksums were rewritten to match.

A run is written into a temporary sibling folder and renamed into place, so a crash never
leaves a half-written RUN, and an existing RUN is only replaced once the new one is complete.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from metarec.atomic import (
    check_can_create,
    public_mode,
    refuse_stdout_folder,
    replace_dir,
    save_safetensors,
    staging_dir,
)
from metarec.errors import first_line
from metarec.types import IdMap, MetarecError

T = TypeVar("T")

FORMAT_VERSION = 1
# what every RUN holds; the manifest must list (and so checksum) each of them
REQUIRED_FILES = ("config.json", "meta.json", "model.safetensors")
# the key each file carries the RUN's id under (JSON top level, safetensors and parquet
# metadata); RUNs written before it existed carry none and load as before
RUN_ID = "run_id"
# meta.json's key for the sha256 of config.json: the config is tied to its RUN without a
# key of its own (config.json is read strictly, and an older metarec refused a RUN whose
# config held "run_id" as from another version)
CONFIG_DIGEST = "config_sha256"


@dataclass(frozen=True, eq=False)
class Run:
    path: Path
    config: dict
    tensors: dict[str, torch.Tensor]
    ids: dict[str, IdMap]
    meta: dict
    run_id: str | None = None  # None: a RUN written before files carried one


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _content_id(
    config: dict, meta: dict, tensors: dict[str, torch.Tensor], ids: dict[str, IdMap]
) -> str:
    """The RUN id: a digest of everything the RUN holds, so a rerun that reproduces a RUN
    writes the same bytes (a random id made every rerun differ), and any change, an
    ``export`` or an ``update`` included, makes a new one."""
    h = hashlib.sha256()
    for doc in (config, meta):
        h.update(json.dumps(doc, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # bytes of the storage as laid out: a view as uint8 reads any dtype (bfloat16 too)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    for name in sorted(ids):
        h.update(json.dumps([name, [str(x) for x in ids[name].ids.tolist()]]).encode())
    return h.hexdigest()[:32]


def check_run_target(out: str | Path) -> Path:
    """The folder writing a RUN to ``out`` replaces (a symlink's target: the link stays);
    refuse one that writing would destroy: anything but a missing path, an empty folder or
    an existing RUN (which is replaced only once the new one is complete)."""
    refuse_stdout_folder(out, "a RUN")
    out = Path(out)
    if out.is_symlink():
        out = Path(os.path.realpath(out))
    # a RUN inside another: the outer one's next replacement deleted it without a word
    # (predict, recommend and export already refuse to write into a RUN)
    outer = next((p for p in out.resolve().parents if is_run(p)), None)
    if outer is not None:
        raise MetarecError(
            f"{out} is inside the RUN {outer}; write the RUN elsewhere (replacing {outer} "
            "would delete it)"
        )
    if out.exists() and not out.is_dir():
        raise MetarecError(f"{out} exists and is not a folder; give a new path for the RUN")
    last = str(out).rstrip(os.sep).rsplit(os.sep, 1)[-1]
    if out.exists() and (last in ("", ".", "..") or os.path.ismount(out)):
        # a RUN replaces its folder by renaming it: a path ending in "." or ".." and a
        # mount point cannot be renamed ("Device or resource busy"), found only after
        # the whole training (the same folder by its full path can be)
        raise MetarecError(
            f"{out} is {'a mount point' if os.path.ismount(out) else 'a . or .. path'}: a "
            "RUN replaces its folder by a rename, which that cannot take; give a path "
            f"inside it (e.g. {Path(out) / 'RUN'}) or its full path"
        )
    # the RUN is staged beside out and renamed in: that folder must take a new entry
    # (a read-only or immutable one failed after the whole training)
    check_can_create(out)
    # another writer's swap may be under way (two renames): judged again once it is
    return _retry_if_replaced(out, lambda: _check_existing_target(out))


def _check_existing_target(out: Path) -> Path:
    if not out.exists():
        return out
    if not any(out.iterdir()):
        return out
    if is_run(out):
        # a RUN is replaced whole: a file the user put beside its files (notes, a P.csv)
        # went with it without a word
        files = json.loads((out / "manifest.json").read_text())["files"]
        if not isinstance(files, dict) or not all(isinstance(k, str) for k in files):
            # null, or a list of objects: a TypeError traceback, not a refusal
            raise MetarecError(
                f"{out / 'manifest.json'}: corrupt manifest (no file list); refusing to "
                "replace the folder"
            )
        listed = set(files) | {"manifest.json"}
        extra = sorted(
            f.relative_to(out).as_posix()
            for f in out.rglob("*")
            if not f.is_dir() and f.relative_to(out).as_posix() not in listed
        )
        if extra:
            raise MetarecError(
                f"{out} is a RUN holding {len(extra)} file(s) it did not write "
                f"({', '.join(extra[:3])}); replacing it would delete them: move them out, "
                "or write the RUN elsewhere"
            )
        return out
    raise MetarecError(
        f"{out} is a non-empty folder that is not a metarec RUN (no metarec manifest.json); "
        "refusing to replace it"
    )


def is_run(folder: Path) -> bool:
    """Whether ``folder`` holds a metarec RUN's manifest (any format version): a JSON
    object with ``format_version`` and ``files``. Any manifest.json counted before, so a
    project folder holding a web app's one could be replaced by ``fit --out`` whole."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"format_version", "files"} <= manifest.keys()


def check_derived_run(out: str | Path, run: str | Path, what: str) -> None:
    """What a command makes from a RUN (a RUN from ``export`` or ``update``, a CSV from
    ``predict`` or ``recommend``) is written outside it: not onto it and not into a folder
    inside it, since the source RUN is never modified."""
    o, r = Path(out).resolve(), Path(run).resolve()
    if o == r:
        raise MetarecError(f"{what}: --out must differ from --run (the RUN is never modified)")
    if r in o.parents:
        raise MetarecError(
            f"{what}: --out {out} is inside the RUN {run}; write it elsewhere (the RUN is "
            "never modified)"
        )


def save_run(
    out: str | Path,
    *,
    config: dict,
    tensors: dict[str, torch.Tensor],
    ids: dict[str, IdMap],
    meta: dict,
    overwrite: bool = True,
) -> Path:
    from metarec import __version__

    out = given = Path(out)
    if out.exists() and not overwrite:
        raise MetarecError(f"{out} exists (pass overwrite=True to replace it)")
    out = check_run_target(out)
    # a RUN there is replaced; a folder another process puts where there was none (or
    # an empty one) is not: it was deleted with the swap, whatever it held (review 148)
    replaces = is_run(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out.parent, out.name)  # sweeps what a killed writer left
    run_id = _content_id(config, meta, tensors, ids)
    try:
        for rel, doc, keys in (
            ("config.json", config, (RUN_ID,)),
            ("meta.json", meta, (RUN_ID, CONFIG_DIGEST)),
        ):
            taken = [k for k in keys if k in doc]
            if taken:
                raise ValueError(f"{rel} may not hold the key {taken[0]!r}: save_run writes it")
        config_text = json.dumps(config, indent=2, sort_keys=True)
        (tmp / "config.json").write_text(config_text)
        stamped = {**meta, RUN_ID: run_id, CONFIG_DIGEST: _text_sha256(config_text)}
        (tmp / "meta.json").write_text(json.dumps(stamped, indent=2, sort_keys=True))
        # safetensors wants contiguous CPU tensors that share no storage.
        save_safetensors(
            {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
            tmp / "model.safetensors",
            metadata={RUN_ID: run_id},
        )
        (tmp / "ids").mkdir()
        for name, idmap in ids.items():
            table = pa.table({"id": pa.array(idmap.ids.tolist(), type=pa.string())})
            table = table.replace_schema_metadata({RUN_ID: run_id})
            pq.write_table(table, tmp / "ids" / f"{name}.parquet")
        for p in tmp.rglob("*"):  # safetensors writes its file 0600; a RUN is copied about
            public_mode(p, directory=p.is_dir())
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "format_version": FORMAT_VERSION,
            "metarec_version": __version__,
            RUN_ID: run_id,
            "files": {f: _sha256(tmp / f) for f in files},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        # the old RUN (if any) aside, the new one in, the old one put back on a failure
        # between the two: `out` is never half-written (stranded_run names the old one
        # that a kill -9 between them leaves in .NAME.old.XXXX/run)
        try:
            replace_dir(tmp, out, ".old.", "run", replace=replaces)
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise _raced(out) from None
            # an existing folder that cannot be renamed (immutable, a mount point): it
            # said "Operation not permitted: RUN", and is left as it was
            raise MetarecError(f"cannot replace {out}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # previous versions that a writer killed between its two renames left aside: `out`
    # now holds a newer complete RUN, so they are superseded
    for stale in out.parent.glob(f".{glob.escape(out.name)}.old.*"):
        if (stale / "run" / "manifest.json").is_file():
            shutil.rmtree(stale, ignore_errors=True)
    return given


def _raced(out: Path) -> MetarecError:
    # the loser of two writers to one RUN said "Directory not empty: .RUN.g63puilr",
    # naming a staging folder its user never saw
    return MetarecError(
        f"{out}: another process wrote a RUN there while this one was writing; this "
        "write was abandoned and that RUN kept"
    )


def stranded_run(path: Path) -> Path | None:
    """The previous RUN that a write killed between its two renames left beside ``path``
    (``.NAME.old.XXXX/run``), when ``path`` itself is gone; None otherwise."""
    if path.exists():
        return None
    for old in sorted(path.parent.glob(f".{glob.escape(path.name)}.old.*")):
        if (old / "run" / "manifest.json").is_file():
            return old / "run"
    return None


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder at ``path``, None where there is none: a RUN
    replaced by another process is another folder at the same path."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _retry_if_replaced(path: Path, attempt: Callable[[], T], tries: int = 5) -> T:
    """``attempt()``, again where it failed while the folder at ``path`` was swapped
    for another (a RUN replaced by `fit` or `update` between two of its reads): a
    command loading a RUN during a nightly fit said "belongs to another RUN; the RUN is
    damaged: re-run metarec fit" of a RUN that was whole before and after (probe 145)."""
    for n in range(tries):
        before = _identity(path)
        try:
            return attempt()
        except (MetarecError, FileNotFoundError):
            if n == tries - 1 or _identity(path) == before:
                raise
            time.sleep(0.05 * (n + 1))  # the swap is two renames; let it finish
    raise AssertionError("unreachable")


def load_run(path: str | Path, verify: bool = True) -> Run:
    """The RUN at ``path``, its files checked against its manifest (``verify``: their
    sha256 too). A RUN replaced while it is read is read again."""
    path = Path(path)
    return _retry_if_replaced(path, lambda: _load_run(path, verify))


def _load_run(path: Path, verify: bool) -> Run:
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        left = stranded_run(path)
        if left is not None:
            raise MetarecError(
                f"{path} is missing: a write was interrupted (or is under way) and the "
                f"previous RUN is at {left}; move it back to {path} to use it"
            )
        raise MetarecError(f"{path} is not a metarec RUN directory (no manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MetarecError(f"{manifest_path}: corrupt manifest ({err})") from None
    if not isinstance(manifest, dict):
        raise MetarecError(f"{manifest_path}: corrupt manifest (not a JSON object)")
    version = manifest.get("format_version")
    # the integer itself: true and 1.0 compare equal to 1 and were taken
    if type(version) is not int or version != FORMAT_VERSION:
        # "'1' is not supported (this metarec reads version 1)" read as a contradiction,
        # and so did 1.0 and true
        spelled = (
            f" (a {type(version).__name__}, not the integer)"
            if version == FORMAT_VERSION or str(version) == str(FORMAT_VERSION)
            else ""
        )
        raise MetarecError(
            f"{path}: RUN format version {version!r}{spelled} is not supported "
            f"(this metarec reads version {FORMAT_VERSION}); re-run `metarec fit`"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise MetarecError(f"{manifest_path}: corrupt manifest (no file list with checksums)")
    unlisted = [f for f in REQUIRED_FILES if f not in files]
    if unlisted:
        # a file the manifest does not list is never checksummed
        raise MetarecError(f"{manifest_path}: corrupt manifest ({unlisted[0]} is not listed)")
    for rel, digest in files.items():
        f = path / rel
        # a listed name reaching outside the RUN ("../T.csv", "/etc/passwd") was opened
        # and hashed wherever it pointed. Checked as written, not resolved: a RUN whose
        # files are symlinks (git-annex, DVC, cp -rs) points outside by design
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise MetarecError(
                f"{manifest_path}: corrupt manifest (lists {rel[:200]!r}, outside the RUN)"
            )
        if not f.is_file():
            raise MetarecError(f"{path}: RUN is incomplete, {rel} is missing")
        if verify and _sha256(f) != digest:
            raise MetarecError(f"{path}: {rel} does not match its checksum (corrupt RUN)")
    # past the checksums a file can still be unreadable: written by a buggy or another
    # version, or edited along with its checksum. One line naming it, not a traceback.
    # the id maps read are the ones the manifest lists (and so checksummed): an unlisted
    # ids/items.parquet with its ids reversed was read, and every score went to the wrong
    # item; an extra unlisted map was read too
    id_files = sorted((path / "ids").glob("*.parquet"))
    stray = [f.relative_to(path).as_posix() for f in id_files]
    stray = [r for r in stray if r not in files]
    if stray:
        raise MetarecError(f"{manifest_path}: corrupt manifest ({stray[0]} is not listed)")
    rel = "model.safetensors"
    stamps: dict[str, object] = {}  # file -> the RUN id it carries (None: none)
    try:
        tensors = load_file(str(path / rel))
        with safe_open(str(path / rel), framework="pt") as fh:
            stamps[rel] = (fh.metadata() or {}).get(RUN_ID)
        ids = {}
        for f in id_files:
            rel = f.relative_to(path).as_posix()
            table = pq.read_table(f)
            stamps[rel] = (table.schema.metadata or {}).get(RUN_ID.encode(), b"").decode() or None
            ids[f.stem] = IdMap(np.asarray(table.column("id").to_pylist(), dtype=object))
        docs, texts = {}, {}
        for rel in ("config.json", "meta.json"):
            texts[rel] = (path / rel).read_text()
            docs[rel] = json.loads(texts[rel])
            if not isinstance(docs[rel], dict):
                raise ValueError("not a JSON object")
        stamps["meta.json"] = docs["meta.json"].pop(RUN_ID, None)
        # config.json carries no id: it is this RUN's where meta.json names its digest
        digest = docs["meta.json"].pop(CONFIG_DIGEST, None)
        if digest is None:
            stamps["config.json"] = None
        elif digest == _text_sha256(texts["config.json"]):
            stamps["config.json"] = stamps["meta.json"]
        else:
            stamps["config.json"] = f"another (sha256 {_text_sha256(texts['config.json'])[:12]})"
    except Exception as err:  # safetensors, pyarrow and json raise unrelated types
        raise MetarecError(
            f"{path}: {rel} is unreadable, the RUN is damaged or from another version "
            f"({type(err).__name__}: {first_line(err)})"
        ) from None
    run_id = manifest.get(RUN_ID)
    # a RUN written before files carried an id has none anywhere; one that has it in its
    # manifest has it in every file. A file from another RUN (copied in with its manifest
    # line) scored with the wrong ids or weights; a file without one came from elsewhere
    if run_id is not None or any(v is not None for v in stamps.values()):
        for rel, stamp in stamps.items():
            if stamp != run_id:
                raise MetarecError(
                    f"{path}: {rel} belongs to another RUN (RUN id {str(stamp)[:40]!r}, the "
                    f"manifest's is {str(run_id)[:40]!r}); the RUN is damaged: re-run "
                    "`metarec fit`"
                )
    return Run(
        path=path,
        config=docs["config.json"],
        tensors=tensors,
        ids=ids,
        meta=docs["meta.json"],
        run_id=run_id,
    )
