"""Text encoders: the hashing test double and the real all-MiniLM-L6-v2."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from metarec.text.encoder import (
    HashingEncoder,
    SentenceTransformerEncoder,
    TextEncoder,
    make_encoder,
)
from metarec.types import MetarecError


def test_hashing_encoder_shape_norm_and_empty_text(hashing_encoder):
    v = hashing_encoder.encode(["Toy Story (1995)", "", "Heat"])
    assert v.shape == (3, 64) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[[0, 2]], axis=1), 1.0, rtol=1e-6)
    assert not v[1].any()  # " " padded empty string has no trigram -> zero vector
    assert isinstance(hashing_encoder, TextEncoder)


def test_hashing_encoder_single_bucket_counts_signed_trigrams():
    # dim=1: every trigram lands in bucket 0 with sign +-1, then L2 normalisation -> +-1 or 0.
    v = HashingEncoder(dim=1).encode(["abc", "x"])
    assert set(np.abs(v).ravel().tolist()) <= {0.0, 1.0}


def test_hashing_encoder_is_case_insensitive_and_similarity_tracks_overlap(hashing_encoder):
    a, b, c, d = hashing_encoder.encode(["Toy Story", "TOY STORY", "Toy Story 2", "Schindler"])
    assert np.array_equal(a, b)
    assert a @ c > 0.8 > a @ d


def test_hashing_encoder_is_stable_across_processes():
    """blake2b, not Python's salted hash(): another interpreter with another seed agrees."""
    code = textwrap.dedent(
        """
        from metarec.text.encoder import HashingEncoder
        import sys
        sys.stdout.write(HashingEncoder(dim=16).encode(["Toy Story (1995)"]).tobytes().hex())
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    here = HashingEncoder(dim=16).encode(["Toy Story (1995)"]).tobytes().hex()
    assert out == here


def test_hashing_fingerprint_changes_with_settings():
    fps = {
        HashingEncoder(64).fingerprint,
        HashingEncoder(32).fingerprint,
        HashingEncoder(64, ngram=(2, 3)).fingerprint,
    }
    assert len(fps) == 3
    assert HashingEncoder(64).fingerprint == HashingEncoder(64).fingerprint


def test_make_encoder_specs():
    assert make_encoder("hashing").dim == 64
    assert make_encoder("hashing:16").dim == 16
    with pytest.raises(MetarecError, match="hashing:<dim>"):
        make_encoder("hashing:abc")
    with pytest.raises(MetarecError, match="dim must be"):
        HashingEncoder(0)


def test_missing_sentence_transformers_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now fails
    # construction may already fail (no bundled model package either): same hint
    with pytest.raises(MetarecError, match=r"metarec\[text\]"):
        SentenceTransformerEncoder("default").encode(["x"])


def test_minilm_fingerprint_and_dim_need_no_model_load(minilm):
    enc = SentenceTransformerEncoder("default")  # fresh instance: nothing loaded yet
    fp = enc.fingerprint
    assert enc.dim == 384
    assert enc._model is None  # a fully cached run never pays the model load
    assert fp.startswith("st:all-MiniLM-L6-v2@")
    assert "|pool=mean|norm=1|maxlen=256" in fp
    assert fp == minilm.fingerprint
    assert SentenceTransformerEncoder("default", normalize=False).fingerprint != fp


def test_minilm_semantic_neighbours(minilm):
    """Sequel closer than an unrelated film; vectors unit-norm (normalize=True)."""
    v = minilm.encode(["Toy Story (1995)", "Toy Story 2 (1999)", "Schindler's List (1993)"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim_sequel, sim_other = float(v[0] @ v[1]), float(v[0] @ v[2])
    # measured: 0.78 vs 0.44
    assert sim_sequel > sim_other + 0.2


def test_unloadable_local_model_dir_is_a_one_line_error(tmp_path):
    pytest.importorskip("sentence_transformers", reason="extra metarec[text] not installed")
    (tmp_path / "config.json").write_text("{not json")
    enc = SentenceTransformerEncoder(tmp_path)
    assert enc.fingerprint.startswith(f"st:{tmp_path.name}@")  # hashing works on any files
    with pytest.raises(MetarecError, match="cannot load text model") as info:
        enc.encode(["x"])
    assert "\n" not in str(info.value)
