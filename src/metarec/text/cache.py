"""On-disk embedding cache keyed by (encoder fingerprint, sha256 of text).

Layout under ``root``::

    <sha256(fingerprint)[:24]>/          one folder per encoder
        index.json                       {"format", "fingerprint", "dim", "shards": [...]}
        shard-<uuid>.safetensors         tensors keys (n, 32) uint8, vectors (n, dim) float32
        .lock                            fcntl.flock target for writers
        .claim-<sha256(part keys)[:32]>  held (flock) while a writer encodes that part

Safety rules, each tested:

* Every file is written to a temp name in the same folder and ``os.replace``d, so readers
  see either the old or the new file, never half of one.
* index.json stores each shard's sha256; a shard whose bytes do not match (truncated,
  corrupted, missing) is dropped and its texts are re-encoded. A broken index.json is
  treated as empty. Wrong vectors are never returned, and nothing here raises on a bad file.
* A cache that cannot be written (read-only, full, a folder where a file belongs) is
  warned about once per call and the vectors are returned unstored.
* Writers take an exclusive ``flock`` on ``.lock``, re-read the index under it, then add
  their shard: two processes embedding at once both land in the index. Readers take no lock.
* New texts are encoded and stored in parts (``COMMIT_EVERY``). A writer claims a part
  (flock on its claim file) while it encodes and stores it; another writer with the
  same part puts it off, does its free parts, then waits (``CLAIM_WAIT_S`` at most)
  and reads it. A claim dies with its process; a claim file left by a killed writer is
  empty and reused.
* The full fingerprint is checked against index.json and shard metadata, so a hash-prefix
  collision between two encoders cannot serve one's vectors to the other.

POSIX only (fcntl). No pickle: safetensors + JSON.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
import uuid
import warnings
from collections import deque
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from metarec.atomic import sweep_staging, write_bytes
from metarec.progress import bar as progress_bar
from metarec.text.encoder import TextEncoder
from metarec.types import MetarecError

FORMAT = "metarec-embcache-1"
# texts encoded per stored shard: an interrupted encode keeps every finished part (MiniLM
# on 2 CPU cores encodes a few hundred titles a second: a part is under a minute's work)
COMMIT_EVERY = 8192
# how long a writer waits for a part another process claimed before encoding it itself
# (a stuck or very slow holder then costs time, never the vectors), and how often it looks
CLAIM_WAIT_S = 600.0
CLAIM_POLL_S = 0.2


@contextmanager
def _log_redraws(bar: bool):
    """Where the encoder draws its tqdm ``bar`` into a log file (stderr not a terminal),
    it redraws every 10 s, as metarec's bars do (metarec.progress), not every batch: ~280
    lines for 17k Last.fm artists. tqdm reads TQDM_MININTERVAL when a bar starts; a value
    the user set stands. Without a bar the environment is left alone."""
    if not bar or sys.stderr.isatty() or "TQDM_MININTERVAL" in os.environ:
        yield
        return
    os.environ["TQDM_MININTERVAL"] = "10"
    try:
        yield
    finally:
        os.environ.pop("TQDM_MININTERVAL", None)


class _Claim:
    """A held claim on one part of new texts: an exclusive ``flock`` on the part's claim
    file, which the OS lets go if the process dies. Empty (no file) where none could be
    taken: the part is encoded without one, as before claims existed."""

    def __init__(self, path: Path | None = None, file=None) -> None:
        self.path, self.file = path, file

    def release(self) -> None:
        if self.file is None:
            return
        try:
            # removed while still held; a writer waiting on this file then finds it no
            # longer at the path and claims the path's file anew (_claim)
            self.path.unlink(missing_ok=True)
        except OSError:  # a folder that became read-only: the empty file stays, reusable
            pass
        finally:
            self.file.close()


def _held_at(f, path: Path) -> bool:
    """Whether the open file ``f`` is still the file at ``path``: a waiter's file may have
    been removed by its holder (and another made there) before the waiter got its lock."""
    try:
        here, there = os.fstat(f.fileno()), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _claim(folder: Path, part: list[bytes], wait: float) -> _Claim | None:
    """Claim ``part`` (its text keys) in ``folder``. None when another process holds it
    and ``wait`` is 0; after ``wait`` > 0 seconds an empty claim (encode it anyway)."""
    path = folder / f".claim-{hashlib.sha256(b''.join(part)).hexdigest()[:32]}"
    deadline = time.monotonic() + wait
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+b")  # noqa: SIM115 - held past this call, closed by release()
        except OSError:  # a read-only cache: no claim (storing will warn)
            return _Claim()
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            if time.monotonic() >= deadline:
                return None if wait <= 0 else _Claim()
            time.sleep(CLAIM_POLL_S)
            continue
        except OSError:  # a filesystem without flock
            f.close()
            return _Claim()
        if _held_at(f, path):
            return _Claim(path, f)
        f.close()  # its holder removed it after use: the file at the path is the claim


def text_key(text: str) -> bytes:
    """32-byte sha256 of the UTF-8 text: the per-text half of a cache key."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Persistent store of text vectors; see the module docstring for the guarantees."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        # each reason said once per cache: `embed` stores items, then users, and a
        # read-only cache printed the same warning twice
        self._said_unstorable: set[str] = set()

    # -- paths and index -----------------------------------------------------------------
    def folder(self, fingerprint: str) -> Path:
        return self.root / hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:24]

    def _read_index(self, folder: Path, fingerprint: str) -> tuple[dict | None, bool]:
        """(index or None if absent, ok). ok is False when the file exists but is unusable."""
        path = folder / "index.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None, True
        except OSError:
            return None, False

        def count(v) -> bool:  # a positive int, not a bool (JSON true is an int here)
            return isinstance(v, int) and not isinstance(v, bool) and v > 0

        try:
            idx = json.loads(raw)
            # field values checked too: "n": null was a TypeError in _load_shard, and
            # "dim": true stopped every later fit with a dim mismatch
            ok = (
                isinstance(idx, dict)
                and idx.get("format") == FORMAT
                and idx.get("fingerprint") == fingerprint
                and count(idx.get("dim"))
                and isinstance(idx.get("shards"), list)
                and all(
                    isinstance(s, dict)
                    and {"file", "n", "sha256"} <= s.keys()
                    and isinstance(s["file"], str)
                    and isinstance(s["sha256"], str)
                    and count(s["n"])
                    for s in idx["shards"]
                )
            )
        except (ValueError, UnicodeDecodeError):
            ok = False
        return (idx, True) if ok else (None, False)

    def _load_shard(
        self, folder: Path, entry: dict, fingerprint: str, dim: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(keys (n, 32) uint8, vectors (n, dim) float32), or None if the shard is bad."""
        name = str(entry["file"])
        if "/" in name or not name.startswith("shard-"):
            return None
        try:
            data = (folder / name).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            return None
        try:
            # safetensors layout: u64 header length, then a JSON header holding __metadata__
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
            if header.get("__metadata__", {}).get("fingerprint") != fingerprint:
                return None
            tensors = st_load(data)
            keys, vecs = tensors["keys"], tensors["vectors"]
        except Exception:  # noqa: BLE001 - checksum matched but content unparsable: treat as bad
            return None
        n = int(entry["n"])
        if keys.shape != (n, 32) or vecs.shape != (n, dim) or vecs.dtype != np.float32:
            return None
        return keys, vecs

    @contextmanager
    def _locked(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- public --------------------------------------------------------------------------
    def lookup(
        self, fingerprint: str
    ) -> tuple[dict[bytes, np.ndarray], int | None, list[dict], bool]:
        """Everything stored for one encoder.

        Returns (key -> vector (dim,), dim or None, bad shard entries, index_ok).
        """
        return self._lookup(fingerprint)[:4]

    def _lookup(
        self, fingerprint: str
    ) -> tuple[dict[bytes, np.ndarray], int | None, list[dict], bool, set[str]]:
        """:meth:`lookup`, and the file names of the shards the index listed (read)."""
        folder = self.folder(fingerprint)
        idx, ok = self._read_index(folder, fingerprint)
        found: dict[bytes, np.ndarray] = {}
        bad: list[dict] = []
        if idx is None:
            return found, None, bad, ok, set()
        dim = idx["dim"]
        for entry in idx["shards"]:
            shard = self._load_shard(folder, entry, fingerprint, dim)
            if shard is None:
                bad.append(entry)
                continue
            keys, vecs = shard
            for k, v in zip(keys, vecs, strict=True):
                found[k.tobytes()] = v
        return found, dim, bad, ok, {e["file"] for e in idx["shards"]}

    def get_or_compute(
        self,
        encoder: TextEncoder,
        texts: Sequence[str],
        batch_size: int | None = None,
        show_progress: bool = False,
        commit_every: int = COMMIT_EVERY,
    ) -> tuple[np.ndarray, dict]:
        """Vectors for ``texts`` (len(texts), dim) float32, encoding only unseen texts.

        The unseen texts are encoded ``commit_every`` at a time, each part stored as its
        own shard once encoded, so an interrupted encode (Ctrl-C, a killed job) keeps what
        it finished and the next call encodes only the rest.

        stats: hits / misses count input positions (hits + misses == len(texts)); encoded
        counts distinct texts sent to the encoder; dropped_shards counts bad shards found.
        """
        if commit_every < 1:
            raise MetarecError(f"embedding cache: commit_every must be >= 1, got {commit_every}")
        texts = [str(t) for t in texts]
        fp = encoder.fingerprint
        keys = [text_key(t) for t in texts]
        # seen: the shards this call has read. One another writer lists meanwhile may hold
        # texts this call encodes too (two embeds of one catalogue at once): _write leaves
        # those out of this call's shards rather than store them twice
        found, dim, bad, index_ok, seen = self._lookup(fp)
        dropped, rebuilt = len(bad), not index_ok

        # Distinct missing texts in first-appearance order, encoded in parts of
        # commit_every (a cold run's batches are those of encoder.encode over each part)
        todo: dict[bytes, str] = {}
        for k, t in zip(keys, texts, strict=True):
            if k not in found and k not in todo:
                todo[k] = t
        hits = sum(k in found for k in keys)
        new_keys = list(todo)
        parts = [new_keys[i : i + commit_every] for i in range(0, len(new_keys), commit_every)]
        stored = True
        # one bar over the parts: the encoder's own bar would restart at every part. One
        # part keeps the encoder's bar (it moves per batch; ours would move per part)
        own_bar = show_progress and len(parts) > 1
        encoder_bar = show_progress and not own_bar
        outer = progress_bar(total=len(new_keys), disable=not own_bar, desc="embed", unit="text")
        encoded = n_stored = 0
        folder = self.folder(fp)
        parts = parts or [[]]  # no new text: one pass still repairs a damaged index
        # A part another live process is encoding (it holds the part's claim) is put off
        # until the free parts are done, then waited for and read: two fits of one new
        # catalogue started together encoded every part twice. Alone, a writer takes its
        # parts in order.
        ahead, put_off = deque(range(len(parts))), deque()
        said_wait = False
        try:
            while ahead or put_off:
                waited = not ahead
                i = (put_off if waited else ahead).popleft()
                part = parts[i]
                claim = _Claim()
                if any(k not in found for k in part):
                    if waited and show_progress and not said_wait:
                        # a silent wait of up to CLAIM_WAIT_S looked like a hang
                        said_wait = True
                        left = sum(len(parts[j]) for j in (i, *put_off))
                        outer.write(  # on its own line, above the bar when one is drawn
                            f"embed: another job is encoding {left} of these texts into "
                            f"{self.root}; waiting for it (at most {CLAIM_WAIT_S:.0f} s)",
                            file=sys.stderr,
                        )
                    taken = _claim(folder, part, wait=CLAIM_WAIT_S if waited else 0.0)
                    if taken is None:
                        put_off.append(i)
                        continue
                    claim = taken
                    # what other writers stored since this call's last read (a part's
                    # holder stores it before it lets go)
                    listed, theirs, their_dim = self._read_since(fp, dim, seen)
                    seen |= listed
                    for k, v in theirs.items():
                        found.setdefault(k, v)
                    dim = their_dim if dim is None else dim
                try:
                    # a concurrent writer may have stored some of this part since (its
                    # vectors came back from the last read or write): not encoded again
                    p_keys = [k for k in part if k not in found]
                    outer.update(len(part) - len(p_keys))
                    new_vecs = None
                    if p_keys:
                        with _log_redraws(encoder_bar):
                            new_vecs = np.asarray(
                                encoder.encode(
                                    [todo[k] for k in p_keys],
                                    batch_size=batch_size,
                                    show_progress=encoder_bar,
                                )
                            )
                        if (
                            new_vecs.dtype != np.float32
                            or new_vecs.ndim != 2
                            or len(new_vecs) != len(p_keys)
                        ):
                            raise MetarecError(
                                f"encoder {fp!r} returned {new_vecs.dtype} array of shape "
                                f"{new_vecs.shape}, expected float32 ({len(p_keys)}, dim)"
                            )
                        if dim is not None and new_vecs.shape[1] != dim:
                            if found:
                                raise MetarecError(
                                    f"encoder {fp!r} returns dim {new_vecs.shape[1]} but the cache "
                                    f"holds dim {dim} vectors for it in {self.folder(fp)} (delete "
                                    "that folder)"
                                )
                            # no stored vector has the index's dim: the index is damaged (an
                            # edited "dim" blocked every later fit); rebuilt below as an
                            # unusable one is
                            index_ok, bad = False, []
                            dropped, rebuilt = 0, True
                        dim = new_vecs.shape[1]
                        for k, v in zip(p_keys, new_vecs, strict=True):
                            found[k] = v
                        encoded += len(p_keys)
                        outer.update(len(p_keys))
                    if stored and (p_keys or bad or not index_ok):
                        try:
                            listed, theirs = self._write(fp, p_keys, new_vecs, dim, bad, seen)
                            seen |= listed
                            for k, v in theirs.items():  # read now: the later parts skip them
                                found.setdefault(k, v)
                            n_stored += len(p_keys)
                            bad, index_ok = [], True  # dropped / rebuilt by that write
                        except (OSError, MetarecError) as err:  # MetarecError: a folder at a file's
                            # path. The cache is a speed-up: a read-only, full or cluttered folder
                            # costs the next run an encode, not this run its vectors (a fit failed
                            # here after every text had been encoded)
                            stored = False
                            reason = (
                                f"{err.strerror or type(err).__name__}: {err.filename or self.folder(fp)}"
                                if isinstance(err, OSError)
                                else str(err)
                            )
                            if reason not in self._said_unstorable:
                                self._said_unstorable.add(reason)
                                warnings.warn(
                                    f"embedding cache {self.root}: could not store vectors "
                                    f"({reason}); "
                                    + (
                                        f"{n_stored} were stored before that, the rest are used "
                                        if n_stored
                                        else "they are used "
                                    )
                                    + "but not kept for the next run",
                                    stacklevel=2,
                                )
                finally:
                    claim.release()
        finally:  # an error or Ctrl-C too: an open bar would glue the error line to it
            outer.close()

        if dim is None:  # no texts at all and nothing cached
            dim = encoder.dim
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = found[k]
        stats = {
            "hits": hits,
            "misses": len(texts) - hits,
            "encoded": encoded,
            "dropped_shards": dropped,
            "index_rebuilt": rebuilt,
            "stored": stored,
        }
        return out, stats

    def _read_since(
        self, fp: str, dim: int | None, seen: set[str]
    ) -> tuple[set[str], dict[bytes, np.ndarray], int | None]:
        """The shards the index lists now that are not in ``seen`` and verify (read without
        the lock, as every reader does): (their file names, key -> vector, the index's dim,
        or None when it has none this call can use)."""
        folder = self.folder(fp)
        idx, _ = self._read_index(folder, fp)
        if idx is None or (dim is not None and idx["dim"] != dim):
            return set(), {}, None
        return (*self._unseen(folder, fp, idx["shards"], idx["dim"], seen), idx["dim"])

    def _unseen(
        self, folder: Path, fp: str, entries: list[dict], dim: int, seen: set[str]
    ) -> tuple[set[str], dict[bytes, np.ndarray]]:
        """Of the shard ``entries``, those not in ``seen`` that verify: (their file names,
        key -> vector (dim,))."""
        listed: set[str] = set()
        vectors: dict[bytes, np.ndarray] = {}
        for entry in entries:
            if entry["file"] in seen:
                continue
            shard = self._load_shard(folder, entry, fp, dim)
            if shard is not None:
                listed.add(entry["file"])
                vectors.update(zip((k.tobytes() for k in shard[0]), shard[1], strict=True))
        return listed, vectors

    def _write(
        self,
        fp: str,
        keys: list[bytes],
        vecs: np.ndarray | None,
        dim: int | None,
        bad: list[dict],
        seen: set[str] = frozenset(),
    ) -> tuple[set[str], dict[bytes, np.ndarray]]:
        """Under the lock: re-read the index, drop bad shards, add the new one, replace.

        ``seen``: shards the caller has read. Keys that a shard listed since then already
        holds are left out of the new one (a concurrent writer encoded them first).
        Returns (the shards listed now: seen, read here, or this call's own; key -> vector
        of the shards read here, for the caller to skip in its later parts).
        """
        folder = self.folder(fp)
        with self._locked(folder):
            idx, ok = self._read_index(folder, fp)
            if idx is None or (dim is not None and idx["dim"] != dim):
                idx = {"format": FORMAT, "fingerprint": fp, "dim": dim, "shards": []}
            bad_files = {b["file"] for b in bad}
            # A shard another process listed since our read is kept only if it verifies now.
            kept = [
                entry
                for entry in idx["shards"]
                if entry["file"] not in bad_files
                or self._load_shard(folder, entry, fp, idx["dim"]) is not None
            ]
            # the vectors of the shards listed since our read
            theirs = (
                self._unseen(folder, fp, kept, dim, seen)[1]
                if dim is not None and idx["dim"] == dim
                else {}
            )
            if theirs and vecs is not None:
                mine = [i for i, k in enumerate(keys) if k not in theirs]
                keys, vecs = [keys[i] for i in mine], vecs[mine]
            new_shard = None  # written here, before the index that lists it
            if keys and vecs is not None:
                name = f"shard-{uuid.uuid4().hex}.safetensors"
                new_shard = folder / name
                data = st_save(
                    {
                        "keys": np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(
                            len(keys), 32
                        ),
                        "vectors": np.ascontiguousarray(vecs, dtype=np.float32),
                    },
                    metadata={"format": FORMAT, "fingerprint": fp},
                )
                write_bytes(new_shard, data, fsync=True)
                kept.append(
                    {"file": name, "n": len(keys), "sha256": hashlib.sha256(data).hexdigest()}
                )
            idx["shards"] = kept
            if idx["dim"] is None:
                return set(), {}
            try:
                write_bytes(
                    folder / "index.json", json.dumps(idx, indent=1).encode("utf-8"), fsync=True
                )
            except BaseException:
                # the new shard, unlisted, held the space the next write needed (a full
                # disk kept failing until it was freed by hand)
                if new_shard is not None:
                    new_shard.unlink(missing_ok=True)
                raise
            # Shards no index lists (dropped as bad, or orphaned by a crash between the two
            # writes above) are garbage; safe to delete because every writer holds the lock.
            listed = {e["file"] for e in kept}
            for p in folder.glob("shard-*.safetensors"):
                if p.name not in listed and not p.is_dir():  # not ours to remove: a folder
                    p.unlink(missing_ok=True)
            # the staging file of a shard whose writer was killed mid-write: each shard
            # has a fresh name, so the sweep of "the next write of the same name" never
            # came, and a large catalogue leaked a whole shard per crash
            for p in folder.glob(".shard-*.safetensors.~*"):
                sweep_staging(folder, p.name[1 : p.name.index(".~")])
            return listed, theirs
