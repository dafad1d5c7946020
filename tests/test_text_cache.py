"""EmbeddingCache: hits/misses, invalidation, corruption recovery, concurrent writers."""

from __future__ import annotations

import fcntl
import json
import multiprocessing as mp
import os
import threading
import time

import numpy as np
import pytest
from safetensors.numpy import load as st_load

from metarec.text import cache as cache_module
from metarec.text.cache import EmbeddingCache, _claim, text_key
from metarec.text.encoder import HashingEncoder
from metarec.types import MetarecError

TEXTS = ["Toy Story (1995)", "Heat (1995)", "Casablanca (1942)", "Babe (1995)"]


class CountingEncoder:
    """Wraps an encoder and records every list it is asked to encode."""

    def __init__(self, inner, fingerprint: str | None = None):
        self.inner, self.calls = inner, []
        self._fp = fingerprint or inner.fingerprint

    @property
    def fingerprint(self):
        return self._fp

    @property
    def dim(self):
        return self.inner.dim

    def encode(self, texts, batch_size=None, show_progress=False):
        self.calls.append(list(texts))
        return self.inner.encode(texts)


def _shards(cache, enc):
    idx = json.loads((cache.folder(enc.fingerprint) / "index.json").read_text())
    return [cache.folder(enc.fingerprint) / s["file"] for s in idx["shards"]]


def test_hits_misses_and_bit_identical_vectors(tmp_path, hashing_encoder):
    cache, enc = EmbeddingCache(tmp_path), CountingEncoder(hashing_encoder)
    v1, s1 = cache.get_or_compute(enc, TEXTS[:3])
    assert (s1["hits"], s1["misses"], s1["encoded"]) == (0, 3, 3)
    v2, s2 = cache.get_or_compute(enc, TEXTS[:3])
    assert (s2["hits"], s2["misses"], s2["encoded"]) == (3, 0, 0)
    assert len(enc.calls) == 1  # the warm call never reached the encoder
    fresh = hashing_encoder.encode(TEXTS[:3])
    assert v1.tobytes() == fresh.tobytes() == v2.tobytes()
    assert v2.dtype == np.float32 and v2.shape == (3, 64)


def test_partial_overlap_encodes_only_new_distinct_texts(tmp_path, hashing_encoder):
    cache, enc = EmbeddingCache(tmp_path), CountingEncoder(hashing_encoder)
    cache.get_or_compute(enc, TEXTS[:2])
    batch = [TEXTS[3], TEXTS[0], TEXTS[3], TEXTS[1], TEXTS[2]]
    v, s = cache.get_or_compute(enc, batch)
    # hits/misses count positions: T0, T1 hit; T3 (twice) and T2 miss; T3 encoded once
    assert (s["hits"], s["misses"], s["encoded"]) == (2, 3, 2)
    assert enc.calls[-1] == [TEXTS[3], TEXTS[2]]  # first-appearance order
    assert v.tobytes() == hashing_encoder.encode(batch).tobytes()
    assert len(_shards(cache, enc)) == 2


def test_changed_encoder_never_hits_old_entries(tmp_path):
    cache = EmbeddingCache(tmp_path)
    a = HashingEncoder(64)
    cache.get_or_compute(a, TEXTS)
    # same dim and same outputs but another fingerprint: still a full miss
    b = CountingEncoder(HashingEncoder(64), fingerprint="other-encoder")
    _, s = cache.get_or_compute(b, TEXTS)
    assert (s["hits"], s["misses"]) == (0, 4)
    c = HashingEncoder(64, ngram=(2,))
    v, s = cache.get_or_compute(c, TEXTS)
    assert (s["hits"], s["misses"]) == (0, 4)
    assert v.tobytes() == c.encode(TEXTS).tobytes()
    _, s = cache.get_or_compute(a, TEXTS)  # the first encoder's entries are still there
    assert s["hits"] == 4


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "empty"])
def test_damaged_shard_is_detected_and_recomputed(tmp_path, hashing_encoder, damage):
    cache = EmbeddingCache(tmp_path)
    cache.get_or_compute(hashing_encoder, TEXTS[:2])
    cache.get_or_compute(hashing_encoder, TEXTS[2:])
    victim = _shards(cache, hashing_encoder)[0]
    data = victim.read_bytes()
    if damage == "flip":  # corrupt one byte inside the vector payload (end of file)
        b = bytearray(data)
        b[-3] ^= 0xFF
        victim.write_bytes(bytes(b))
    elif damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(b"")
    enc = CountingEncoder(hashing_encoder)
    v, s = cache.get_or_compute(enc, TEXTS)
    assert s["dropped_shards"] == 1
    assert (s["hits"], s["misses"]) == (2, 2)
    assert enc.calls == [TEXTS[:2]]  # only the lost shard's texts are re-encoded
    assert v.tobytes() == hashing_encoder.encode(TEXTS).tobytes()
    # repaired: the next call is all hits and the bad shard is gone from disk
    _, s = cache.get_or_compute(enc, TEXTS)
    assert (s["hits"], s["dropped_shards"]) == (4, 0)
    assert not victim.exists()


def test_corrupt_index_is_rebuilt(tmp_path, hashing_encoder):
    cache = EmbeddingCache(tmp_path)
    cache.get_or_compute(hashing_encoder, TEXTS)
    folder = cache.folder(hashing_encoder.fingerprint)
    (folder / "index.json").write_text('{"format": "metarec-embcache-1", "shar')
    v, s = cache.get_or_compute(hashing_encoder, TEXTS)
    assert s["index_rebuilt"] and (s["hits"], s["misses"]) == (0, 4)
    assert v.tobytes() == hashing_encoder.encode(TEXTS).tobytes()
    _, s = cache.get_or_compute(hashing_encoder, TEXTS)
    assert s["hits"] == 4 and not s["index_rebuilt"]
    assert len(list(folder.glob("shard-*"))) == 1  # the orphaned old shard was removed
    assert not list(folder.glob("*.tmp"))


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", None), ("n", "abc"), ("n", True), ("dim", 5), ("dim", True), ("dim", -1)],
)
def test_index_with_damaged_values_is_rebuilt_not_fatal(tmp_path, hashing_encoder, field, value):
    # valid JSON with a wrong value: "n": null was a TypeError, "dim": 5 a dim mismatch
    # that stopped every later fit with this encoder
    cache = EmbeddingCache(tmp_path)
    cache.get_or_compute(hashing_encoder, TEXTS)
    index = cache.folder(hashing_encoder.fingerprint) / "index.json"
    idx = json.loads(index.read_text())
    if field == "n":
        idx["shards"][0]["n"] = value
    else:
        idx["dim"] = value
    index.write_text(json.dumps(idx))
    v, s = cache.get_or_compute(hashing_encoder, TEXTS)
    assert v.tobytes() == hashing_encoder.encode(TEXTS).tobytes()
    assert s["misses"] == 4
    _, s = cache.get_or_compute(hashing_encoder, TEXTS)  # repaired
    assert s["hits"] == 4 and not s["index_rebuilt"]


def test_a_killed_shard_writers_staging_file_is_swept(tmp_path, hashing_encoder):
    # a writer killed mid-shard left ".shard-<uuid>.safetensors.~host-pid~X.tmp"; every
    # shard has a fresh name, so nothing ever removed it
    import subprocess
    import sys

    from metarec.atomic import staging_prefix

    cache = EmbeddingCache(tmp_path)
    cache.get_or_compute(hashing_encoder, TEXTS[:2])
    folder = cache.folder(hashing_encoder.fingerprint)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    mine = staging_prefix("shard-abc.safetensors")
    left = folder / (mine.replace(f"-{os.getpid()}~", f"-{pid}~") + "x.tmp")  # dead writer
    left.write_bytes(b"half a shard")
    live = folder / (mine + "y.tmp")  # this process is alive: left alone
    live.write_bytes(b"being written")
    cache.get_or_compute(hashing_encoder, TEXTS)  # a write
    assert not left.exists() and live.exists()


def test_index_naming_another_fingerprint_is_ignored(tmp_path, hashing_encoder):
    """A folder whose index belongs to another encoder (hash-prefix clash) gives no hits."""
    cache = EmbeddingCache(tmp_path)
    cache.get_or_compute(hashing_encoder, TEXTS)
    index = cache.folder(hashing_encoder.fingerprint) / "index.json"
    idx = json.loads(index.read_text())
    idx["fingerprint"] = "someone-else"
    index.write_text(json.dumps(idx))
    _, s = cache.get_or_compute(hashing_encoder, TEXTS)
    assert s["hits"] == 0


def test_empty_input(tmp_path, hashing_encoder):
    v, s = EmbeddingCache(tmp_path).get_or_compute(hashing_encoder, [])
    assert v.shape == (0, 64) and (s["hits"], s["misses"]) == (0, 0)


def test_text_key_is_sha256_of_utf8():
    assert text_key("abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def _writer(root: str, worker: int, n_rounds: int) -> None:
    enc = HashingEncoder(32)
    cache = EmbeddingCache(root)
    for r in range(n_rounds):
        # overlapping texts between workers, new ones every round
        texts = [f"text {r}-{j}" for j in range(4)] + [f"worker {worker} round {r}"]
        cache.get_or_compute(enc, texts)


def test_two_processes_writing_at_once_leave_a_consistent_cache(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 25)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    enc = CountingEncoder(HashingEncoder(32))
    every = [f"text {r}-{j}" for r in range(25) for j in range(4)]
    every += [f"worker {w} round {r}" for w in range(2) for r in range(25)]
    v, s = EmbeddingCache(tmp_path).get_or_compute(enc, every)
    # nothing lost (both writers' shards are in the index), nothing corrupt, no re-encoding
    assert (s["hits"], s["dropped_shards"], enc.calls) == (150, 0, [])
    assert v.tobytes() == HashingEncoder(32).encode(every).tobytes()
    folder = EmbeddingCache(tmp_path).folder(enc.fingerprint)
    listed = {p.name for p in _shards(EmbeddingCache(tmp_path), enc)}
    assert listed == {p.name for p in folder.glob("shard-*")}
    assert not list(folder.glob("*.tmp"))


def test_shard_of_another_encoder_is_not_served(tmp_path, hashing_encoder):
    """Checksum fine but the shard's own metadata names another encoder: dropped."""
    cache = EmbeddingCache(tmp_path)
    other = HashingEncoder(64, ngram=(2,))
    cache.get_or_compute(other, TEXTS)
    cache.get_or_compute(hashing_encoder, TEXTS[:1])
    mine = cache.folder(hashing_encoder.fingerprint)
    theirs = _shards(cache, other)[0]
    idx = json.loads((mine / "index.json").read_text())
    (mine / theirs.name).write_bytes(theirs.read_bytes())
    idx["shards"].append({"file": theirs.name, "n": 4, "sha256": _sha(theirs)})
    (mine / "index.json").write_text(json.dumps(idx))
    v, s = cache.get_or_compute(hashing_encoder, TEXTS)
    assert (s["hits"], s["dropped_shards"]) == (1, 1)
    assert v.tobytes() == hashing_encoder.encode(TEXTS).tobytes()


def _sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_cache_that_cannot_be_written_warns_and_returns_the_vectors(tmp_path):
    # the cache is a speed-up: a file where its folder belongs (METAREC_HOME=/dev/null),
    # or a folder where its lock or index belongs, failed the fit after every text had
    # been encoded
    enc = HashingEncoder(dim=16)
    want = enc.encode(["a", "b"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for root in (blocker, blocker / "sub"):
        with pytest.warns(UserWarning, match="could not store vectors"):
            vecs, stats = EmbeddingCache(root).get_or_compute(enc, ["a", "b"])
        np.testing.assert_array_equal(vecs, want)
        assert stats["stored"] is False and stats["encoded"] == 2
    cache = EmbeddingCache(tmp_path / "emb")
    folder = cache.folder(enc.fingerprint)
    folder.mkdir(parents=True)
    (folder / ".lock").mkdir()
    with pytest.warns(UserWarning, match="could not store vectors"):
        vecs, _ = cache.get_or_compute(enc, ["a", "b"])
    np.testing.assert_array_equal(vecs, want)
    (folder / ".lock").rmdir()
    (folder / "index.json").mkdir()  # a folder where the index belongs
    with pytest.warns(UserWarning, match="could not store vectors"):
        vecs, _ = cache.get_or_compute(enc, ["a", "b"])
    np.testing.assert_array_equal(vecs, want)


def test_a_folder_named_like_a_shard_is_left_alone(tmp_path):
    # the clean-up of unlisted shards unlinked by name: a folder there made every later
    # write fail ("Is a directory")
    enc = HashingEncoder(dim=16)
    cache = EmbeddingCache(tmp_path)
    cache.get_or_compute(enc, ["a"])
    junk = cache.folder(enc.fingerprint) / "shard-dir.safetensors"
    junk.mkdir()
    vecs, stats = cache.get_or_compute(enc, ["b"])
    assert stats["stored"] and junk.is_dir()
    _, stats = cache.get_or_compute(enc, ["a", "b"])
    assert stats["hits"] == 2


def test_embed_says_when_it_repaired_the_cache_and_fails_when_it_kept_nothing(
    tmp_path, capsys, monkeypatch
):
    # a damaged shard was dropped and every text encoded again with exit 0 and no word
    # (it looked like a cold start), and a cache that stored nothing still exited 0
    import json

    from metarec.cli import main

    monkeypatch.setenv("METAREC_HOME", str(tmp_path / "home"))
    argv = ["embed", "goodbooks-sample", "--model", "hashing", "--json"]
    cache = tmp_path / "c"
    assert main([*argv, "--cache", str(cache)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["stored"] and first["dropped_shards"] == 0 and not first["index_rebuilt"]
    shard = next(cache.rglob("shard-*.safetensors"))
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert main([*argv, "--cache", str(cache)]) == 0
    out, err = capsys.readouterr()
    again = json.loads(out)
    assert again["dropped_shards"] == 1 and again["encoded"] == first["encoded"]
    assert "was damaged: 1 shard(s) dropped" in err
    (tmp_path / "afile").write_text("x")
    assert main([*argv, "--cache", str(tmp_path / "afile")]) == 2
    assert "could not store the vectors" in capsys.readouterr().err


def test_a_failed_index_write_leaves_no_unlisted_shard(tmp_path, hashing_encoder, monkeypatch):
    # a full disk: the shard was written, the index write failed, and the unlisted shard
    # held the space every later write needed until it was removed by hand (probe 120)
    import warnings

    import metarec.text.cache as C

    real = C.write_bytes

    def full(path, data, **kw):
        if path.name == "index.json":
            raise OSError(28, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(C, "write_bytes", full)
    cache = EmbeddingCache(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cache's own "could not store" warning
        try:
            vecs, _ = cache.get_or_compute(hashing_encoder, TEXTS[:3])
        except OSError:
            vecs = None
    if vecs is not None:  # the vectors are still served, from the encoder
        assert vecs.tobytes() == hashing_encoder.encode(TEXTS[:3]).tobytes()
    assert not list(tmp_path.rglob("shard-*.safetensors"))


class FailingAfter(CountingEncoder):
    """Encodes ``ok`` calls, then raises: a job killed part-way through an encode."""

    def __init__(self, inner, ok: int):
        super().__init__(inner)
        self.ok = ok

    def encode(self, texts, batch_size=None, show_progress=False):
        if len(self.calls) >= self.ok:
            raise KeyboardInterrupt
        return super().encode(texts, batch_size, show_progress)


def test_an_interrupted_encode_keeps_its_finished_parts(tmp_path, hashing_encoder):
    texts = [f"book {i}" for i in range(10)]
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute(FailingAfter(hashing_encoder, ok=2), texts, commit_every=4)
    enc = CountingEncoder(hashing_encoder)
    v, s = cache.get_or_compute(enc, texts, commit_every=4)
    # parts [0:4] and [4:8] were stored before the third part was interrupted
    assert (s["hits"], s["encoded"]) == (8, 2)
    assert enc.calls == [texts[8:]]
    assert v.tobytes() == hashing_encoder.encode(texts).tobytes()
    assert len(_shards(cache, enc)) == 3


def test_commit_every_must_be_positive(tmp_path, hashing_encoder):
    with pytest.raises(MetarecError, match="commit_every must be >= 1, got 0"):
        EmbeddingCache(tmp_path).get_or_compute(hashing_encoder, TEXTS, commit_every=0)


class RacingEncoder(CountingEncoder):
    """While encoding, another writer stores some of the same texts first (two embeds of
    one catalogue at once)."""

    def __init__(self, inner, root, rival_texts):
        super().__init__(inner)
        self.root, self.rival_texts = root, rival_texts

    def encode(self, texts, batch_size=None, show_progress=False):
        if not self.calls:
            EmbeddingCache(self.root).get_or_compute(self.inner, self.rival_texts)
        return super().encode(texts, batch_size, show_progress)


def test_texts_a_concurrent_writer_stored_first_are_not_stored_twice(tmp_path, hashing_encoder):
    enc = RacingEncoder(hashing_encoder, tmp_path, TEXTS[1:3])
    cache = EmbeddingCache(tmp_path)
    v, s = cache.get_or_compute(enc, TEXTS)
    assert s["encoded"] == 4 and v.tobytes() == hashing_encoder.encode(TEXTS).tobytes()
    stored = [st_load(p.read_bytes())["keys"] for p in _shards(cache, enc)]
    keys = [bytes(k) for part in stored for k in part]
    # the rival's shard holds TEXTS[1:3]; this call's holds only the other two
    assert sorted(keys) == sorted(text_key(t) for t in TEXTS)
    _, s = cache.get_or_compute(CountingEncoder(hashing_encoder), TEXTS)
    assert s["hits"] == 4


def test_into_a_log_the_encoders_bar_redraws_every_10_s(tmp_path, hashing_encoder, capsys):
    """sentence-transformers' bar redraws every batch: ~280 lines in a redirected stderr
    for 17k texts (probe 124). One part keeps the encoder's bar (metarec's own moved per
    8,192-text part only: 0% for half a minute, probe 129), at tqdm's 10 s interval."""
    seen = []

    class Recording(CountingEncoder):
        def encode(self, texts, batch_size=None, show_progress=False):
            seen.append((show_progress, os.environ.get("TQDM_MININTERVAL")))
            return super().encode(texts)

    assert "TQDM_MININTERVAL" not in os.environ
    EmbeddingCache(tmp_path).get_or_compute(Recording(hashing_encoder), TEXTS, show_progress=True)
    assert seen == [(True, "10")]  # stderr is captured here: not a terminal
    assert "TQDM_MININTERVAL" not in os.environ  # put back
    # several parts: one metarec bar over them, the encoder's off
    seen.clear()
    texts = [f"t{i}" for i in range(6)]
    EmbeddingCache(tmp_path / "b").get_or_compute(
        Recording(hashing_encoder), texts, show_progress=True, commit_every=3
    )
    assert [s for s, _ in seen] == [False, False]
    assert "embed: 100%" in capsys.readouterr().err


def test_a_later_part_a_concurrent_writer_stored_is_read_not_encoded(tmp_path, hashing_encoder):
    """The rival's shards were checked against the first part only: the second part was
    encoded and stored again (12 keys stored for 8 texts)."""
    texts = [f"book {i}" for i in range(8)]

    class Rival(CountingEncoder):  # before this call's first encode, all 8 are stored
        def encode(self, t, batch_size=None, show_progress=False):
            if not self.calls:
                # in one part of 8: a part of 4 would be this call's first part, which it
                # holds the claim on while it encodes (the rival would wait on it)
                EmbeddingCache(tmp_path).get_or_compute(self.inner, texts, commit_every=8)
            return super().encode(t, batch_size, show_progress)

    enc = Rival(hashing_encoder)
    cache = EmbeddingCache(tmp_path)
    v, s = cache.get_or_compute(enc, texts, commit_every=4)
    assert enc.calls == [texts[:4]] and s["encoded"] == 4  # the second part was read
    assert v.tobytes() == hashing_encoder.encode(texts).tobytes()
    stored = [k for p in _shards(cache, enc) for k in st_load(p.read_bytes())["keys"]]
    assert len(stored) == 8


def test_a_warm_call_draws_no_bar(tmp_path, hashing_encoder, capsys):
    cache = EmbeddingCache(tmp_path)
    cache.get_or_compute(hashing_encoder, TEXTS)
    capsys.readouterr()
    cache.get_or_compute(hashing_encoder, TEXTS, show_progress=True)
    cache.get_or_compute(hashing_encoder, [], show_progress=True)
    assert capsys.readouterr().err == ""  # it wrote "embed: 0text" into every warm fit's log


def test_a_write_that_fails_part_way_says_what_was_kept(tmp_path, hashing_encoder, monkeypatch):
    texts = [f"book {i}" for i in range(8)]
    cache = EmbeddingCache(tmp_path)
    real, writes = EmbeddingCache._write, []

    def second_fails(self, *args):
        writes.append(1)
        if len(writes) == 2:
            raise OSError(28, "No space left on device")
        return real(self, *args)

    monkeypatch.setattr(EmbeddingCache, "_write", second_fails)
    with pytest.warns(UserWarning, match="4 were stored before that, the rest are used but not"):
        _, s = cache.get_or_compute(hashing_encoder, texts, commit_every=4)
    assert s["stored"] is False
    monkeypatch.undo()
    _, s = cache.get_or_compute(hashing_encoder, texts)
    assert (s["hits"], s["encoded"]) == (4, 4)


def _claim_of(cache, enc, texts):
    return _claim(cache.folder(enc.fingerprint), [text_key(t) for t in texts], wait=0)


def test_a_part_another_writer_is_encoding_is_put_off_then_read_not_encoded(
    tmp_path, hashing_encoder
):
    """Two fits of one new catalogue started together encoded every part twice."""
    texts = [f"book {i}" for i in range(8)]
    cache, enc = EmbeddingCache(tmp_path), CountingEncoder(hashing_encoder)
    held = _claim_of(cache, enc, texts[:4])  # another writer is encoding the first part
    out = {}
    worker = threading.Thread(
        target=lambda: out.update(r=cache.get_or_compute(enc, texts, commit_every=4))
    )
    worker.start()
    for _ in range(200):  # the free part first
        if enc.calls:
            break
        time.sleep(0.02)
    assert enc.calls == [texts[4:]]
    # the holder stores its part, then lets go: the waiting writer reads it
    cache._write(
        enc.fingerprint,
        [text_key(t) for t in texts[:4]],
        hashing_encoder.encode(texts[:4]),
        hashing_encoder.dim,
        [],
        set(),
    )
    held.release()
    worker.join(30)
    assert not worker.is_alive()
    v, s = out["r"]
    assert enc.calls == [texts[4:]] and s["encoded"] == 4
    assert v.tobytes() == hashing_encoder.encode(texts).tobytes()
    stored = [k for p in _shards(cache, enc) for k in st_load(p.read_bytes())["keys"]]
    assert len(stored) == 8
    assert not list(cache.folder(enc.fingerprint).glob(".claim-*"))  # released, removed


def test_a_claim_held_past_the_wait_costs_time_not_the_vectors(
    tmp_path, hashing_encoder, monkeypatch, capsys
):
    monkeypatch.setattr(cache_module, "CLAIM_WAIT_S", 0.3)
    texts = [f"book {i}" for i in range(8)]
    cache, enc = EmbeddingCache(tmp_path), CountingEncoder(hashing_encoder)
    held = _claim_of(cache, enc, texts[:4])  # a stuck writer: never stores, never lets go
    try:
        v, s = cache.get_or_compute(enc, texts, commit_every=4, show_progress=True)
    finally:
        held.release()
    # the wait is said (silent, it looked like a hang: review 133)
    assert "embed: another job is encoding 4 of these texts" in capsys.readouterr().err
    assert enc.calls == [texts[4:], texts[:4]] and s["encoded"] == 8
    assert v.tobytes() == hashing_encoder.encode(texts).tobytes()
    assert s["stored"] and len(_shards(cache, enc)) == 2


class SlowEncoder(HashingEncoder):
    def encode(self, texts, batch_size=None, show_progress=False):
        time.sleep(0.2)
        return super().encode(texts, batch_size, show_progress)


def _embed_at_once(root: str, start, done) -> None:
    texts = [f"title {i}" for i in range(12)]
    start.wait(60)  # both writers begin together
    _, s = EmbeddingCache(root).get_or_compute(SlowEncoder(32), texts, commit_every=2)
    done.put(s["encoded"])


def test_two_writers_started_together_encode_each_part_once(tmp_path):
    ctx = mp.get_context("spawn")
    start, done = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_embed_at_once, args=(str(tmp_path), start, done)) for _ in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    encoded = [done.get(timeout=5) for _ in procs]
    # 6 parts of 2: each encoded by one writer (before claims: 12 texts each)
    assert sum(encoded) == 12, encoded
    enc = HashingEncoder(32)
    stored = [
        k for p in _shards(EmbeddingCache(tmp_path), enc) for k in st_load(p.read_bytes())["keys"]
    ]
    assert len(stored) == 12


def test_a_claim_file_its_holder_removed_is_not_taken_for_the_claim(tmp_path, monkeypatch):
    """A waiter that got the lock of a file its holder had just removed held a file nobody
    else would, while a newcomer claimed the file now at the path: both encoded the part
    (review 133)."""
    folder, part = tmp_path / "f", [text_key("a")]
    real_flock, other = fcntl.flock, []

    def swap_then_lock(fd, op):
        if not other:  # meanwhile the holder removes its file and a newcomer claims anew
            path = next(folder.glob(".claim-*"))
            path.unlink()
            other.append(open(path, "a+b"))  # noqa: SIM115
            real_flock(other[0].fileno(), fcntl.LOCK_EX)
        return real_flock(fd, op)

    monkeypatch.setattr(cache_module.fcntl, "flock", swap_then_lock)
    try:
        assert _claim(folder, part, wait=0) is None  # the newcomer holds the part
    finally:
        other[0].close()
    monkeypatch.setattr(cache_module.fcntl, "flock", real_flock)
    mine = _claim(folder, part, wait=0)
    assert mine is not None and mine.file is not None
    mine.release()
    assert not list(folder.glob(".claim-*"))


def test_a_claim_file_that_cannot_be_removed_is_left_and_the_vectors_returned(
    tmp_path, hashing_encoder, monkeypatch
):
    """A folder that turned read-only: release() raised PermissionError out of the encode
    and left its claim locked (review 133)."""
    real = cache_module.Path.unlink

    def refuse_claims(self, missing_ok=False):
        if self.name.startswith(".claim-"):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(cache_module.Path, "unlink", refuse_claims)
    texts = [f"book {i}" for i in range(8)]
    cache = EmbeddingCache(tmp_path)
    v, s = cache.get_or_compute(hashing_encoder, texts, commit_every=4)
    assert v.tobytes() == hashing_encoder.encode(texts).tobytes() and s["encoded"] == 8
    left = list(cache.folder(hashing_encoder.fingerprint).glob(".claim-*"))
    assert len(left) == 2
    for path in left:  # closed, so not held: another writer takes them at once
        with open(path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_cache_that_cannot_store_says_each_reason_once(tmp_path):
    # embed stores the item texts, then the user texts, through one cache: a read-only
    # cache printed the same warning twice
    import warnings

    cache = EmbeddingCache(tmp_path / "afile")
    (tmp_path / "afile").write_text("x")
    enc = HashingEncoder(dim=16)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cache.get_or_compute(enc, ["a", "b"])
        cache.get_or_compute(enc, ["c"])
    assert sum("could not store vectors" in str(w.message) for w in seen) == 1


def test_embed_on_a_cache_it_cannot_write_says_so_once(tmp_path, capsys, monkeypatch):
    # embed stores the item texts, then the user texts: a read-only cache printed the
    # same warning twice
    from metarec.cli import main

    monkeypatch.setenv("METAREC_HOME", str(tmp_path / "home"))
    (tmp_path / "afile").write_text("x")
    argv = ["embed", "movielens-100k", "--model", "hashing", "--json"]
    data = os.environ.get("METAREC_DATA_DIR")
    if not data:
        pytest.skip("METAREC_DATA_DIR is unset: MovieLens-100K (item and user texts) is needed")
    assert main([*argv, "--cache", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err.count("could not store vectors") == 1
