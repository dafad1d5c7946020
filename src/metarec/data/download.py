"""One cached downloader for datasets with public URLs (MovieLens zips).

Files land in ``<cache>/downloads/<file name>`` and zips are unpacked into
``<cache>/extracted/<zip stem>/``; the cache root is ``$METAREC_HOME`` or
``~/.cache/metarec``. Every write goes to a temporary name in the same folder and is moved
into place with ``os.replace`` only after the checksum matched, so an interrupted or
corrupted download never leaves a file that a later call would trust.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from metarec.atomic import atomic_path, staging_dir
from metarec.errors import user_path
from metarec.types import MetarecError

HOME_ENV = "METAREC_HOME"
_CHUNK = 1 << 20


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    # "~/x" expanded as a shell would ($METAREC_HOME="~/x", quoted, made a literal ./~/x)
    if cache_dir is not None:
        return user_path(cache_dir)
    env = os.environ.get(HOME_ENV)
    return user_path(env) if env else Path.home() / ".cache" / "metarec"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, sha256: str | None, timeout: float) -> None:
    h = hashlib.sha256()
    with atomic_path(dest, suffix=".part") as tmp:
        try:
            with tmp.open("wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise MetarecError(f"download of {url} failed: {reason}") from None
        got = h.hexdigest()
        if sha256 is not None and got != sha256.lower():
            raise MetarecError(
                f"download of {url}: sha256 mismatch (expected {sha256.lower()}, got {got}); "
                "nothing was cached"
            )


def _extract(archive: Path, target: Path) -> None:
    """Unpack into a temp folder beside ``target``, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(target.parent, target.name)
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    p = PurePosixPath(member)
                    # Refuse members that would land outside the target ("zip slip").
                    if p.is_absolute() or ".." in p.parts:
                        raise MetarecError(f"{archive}: unsafe member path {member!r} in zip")
                zf.extractall(tmp)
        except zipfile.BadZipFile:
            raise MetarecError(f"{archive}: not a valid zip file") from None
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def fetch(
    url: str,
    sha256: str | None,
    cache_dir: str | os.PathLike | None = None,
    *,
    allow_unverified: bool = False,
    extract: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` once into the cache and return its local path.

    ``sha256`` is the expected hex digest of the downloaded file; ``None`` is accepted
    only with ``allow_unverified=True`` (we do not ship checksums we have not verified).
    A cached file is re-hashed on every call when ``sha256`` is given and re-downloaded if
    it does not match. For a ``.zip`` with ``extract=True`` the return value is the
    extraction folder, or its single top-level folder when the zip has one (ml-100k.zip
    holds ``ml-100k/``).
    """
    if sha256 is None and not allow_unverified:
        raise MetarecError(
            f"no sha256 given for {url}; pass the expected checksum or allow_unverified=True"
        )
    name = PurePosixPath(urllib.request.url2pathname(url.split("?")[0])).name
    if not name:
        raise MetarecError(f"cannot tell a file name from the URL {url!r}")
    root = cache_root(cache_dir)
    dest = root / "downloads" / name
    if dest.is_file() and sha256 is not None and sha256_file(dest) != sha256.lower():
        dest.unlink()  # a stale or corrupted cached copy: fetch it again
    if not dest.is_file():
        _download(url, dest, sha256, timeout)
    if not (extract and name.lower().endswith(".zip")):
        return dest
    target = root / "extracted" / name[: -len(".zip")]
    # Extract when new, or when the zip is newer than its extraction (re-downloaded).
    if not target.is_dir() or target.stat().st_mtime < dest.stat().st_mtime:
        _extract(dest, target)
    entries = [p for p in target.iterdir() if not p.name.startswith(("__MACOSX", "."))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target
