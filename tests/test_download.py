"""The cached downloader, against file:// URLs of zips built in tmp_path (no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile

import pytest

from metarec.data import DATASETS, read_raw
from metarec.data.download import fetch
from metarec.types import MetarecError


def make_zip(path, members: dict[str, str]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_verifies_caches_and_extracts(tmp_path):
    src, digest = make_zip(tmp_path / "toy.zip", {"toy/a.txt": "hello", "toy/b.txt": "world"})
    cache = tmp_path / "cache"
    out = fetch(src.as_uri(), digest, cache)
    # a zip with a single top-level folder returns that folder
    assert out == cache / "extracted" / "toy" / "toy"
    assert (out / "a.txt").read_text() == "hello"
    assert (cache / "downloads" / "toy.zip").read_bytes() == src.read_bytes()
    # second call: served from the cache even though the source is gone
    src.unlink()
    assert fetch(src.as_uri(), digest, cache) == out
    # no temporary files left behind anywhere in the cache
    assert not [p for p in cache.rglob("*") if p.name.startswith(".")]


def test_fetch_wrong_checksum_leaves_nothing(tmp_path):
    src, digest = make_zip(tmp_path / "toy.zip", {"a.txt": "x"})
    cache = tmp_path / "cache"
    with pytest.raises(MetarecError, match=r"sha256 mismatch.*nothing was cached"):
        fetch(src.as_uri(), "0" * 64, cache)
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_fetch_replaces_corrupted_cached_copy(tmp_path):
    src, digest = make_zip(tmp_path / "toy.zip", {"a.txt": "x"})
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / "toy.zip").write_bytes(b"truncated")
    out = fetch(src.as_uri(), digest, cache)
    assert out == cache / "extracted" / "toy"  # the only entry is a file, not a folder
    assert (out / "a.txt").read_text() == "x"


def test_fetch_requires_checksum_or_explicit_opt_out(tmp_path):
    src, _ = make_zip(tmp_path / "toy.zip", {"a.txt": "x"})
    with pytest.raises(MetarecError, match=r"no sha256 given .*allow_unverified=True"):
        fetch(src.as_uri(), None, tmp_path / "cache")
    out = fetch(src.as_uri(), None, tmp_path / "cache", allow_unverified=True)
    assert (out / "a.txt").read_text() == "x"


def test_fetch_plain_file_and_env_cache_root(tmp_path, monkeypatch):
    src = tmp_path / "data.csv"
    src.write_text("a,b\n")
    digest = hashlib.sha256(b"a,b\n").hexdigest()
    monkeypatch.setenv("METAREC_HOME", str(tmp_path / "home"))
    out = fetch(src.as_uri(), digest)
    assert out == tmp_path / "home" / "downloads" / "data.csv"
    assert out.read_text() == "a,b\n"


def test_fetch_refuses_zip_slip(tmp_path):
    src, digest = make_zip(tmp_path / "evil.zip", {"../outside.txt": "x"})
    with pytest.raises(MetarecError, match=r"unsafe member path '../outside.txt'"):
        fetch(src.as_uri(), digest, tmp_path / "cache")
    assert not (tmp_path / "cache" / "outside.txt").exists()
    assert not (tmp_path / "cache" / "extracted" / "evil").exists()


def test_fetch_bad_zip_and_missing_source(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    digest = hashlib.sha256(b"not a zip").hexdigest()
    with pytest.raises(MetarecError, match=r"not a valid zip file"):
        fetch(bad.as_uri(), digest, tmp_path / "cache")
    with pytest.raises(MetarecError, match=r"download of .*missing.zip failed"):
        fetch((tmp_path / "missing.zip").as_uri(), digest, tmp_path / "cache")


def test_read_raw_download_path(tmp_path, monkeypatch):
    """read_raw(download=True) fetches the registered URL and parses the extracted folder."""
    src, digest = make_zip(
        tmp_path / "ml-100k.zip",
        {
            "ml-100k/u.data": "1\t10\t4\t100\n",
            "ml-100k/u.item": "10|A (1990)|||u|" + "|".join(["0"] * 19) + "\n",
            "ml-100k/u.user": "1|30|F|other|12345\n",
        },
    )
    spec = dataclasses.replace(DATASETS["movielens-100k"], url=src.as_uri())
    monkeypatch.setitem(DATASETS, "movielens-100k", spec)
    monkeypatch.setenv("METAREC_HOME", str(tmp_path / "home"))
    with pytest.raises(MetarecError, match=r"no sha256 given"):
        read_raw("movielens-100k", download=True)
    raw = read_raw("movielens-100k", download=True, sha256=digest)
    assert raw.ratings["rating"].tolist() == [4.0]
    assert raw.source == str(tmp_path / "home" / "extracted" / "ml-100k" / "ml-100k")


def test_a_tilde_home_is_expanded(tmp_path, monkeypatch):
    # METAREC_HOME="~/x" (quoted, so no shell expanded it) made a literal ./~/x folder
    from metarec.data.download import cache_root

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("METAREC_HOME", "~/x")
    assert cache_root() == tmp_path / "x"
    assert cache_root("~/y") == tmp_path / "y"
