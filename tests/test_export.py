"""`metarec export`: int8 rows with scales (hand-computed), fp16, exact training log, and an
exported RUN that Predictor.load serves with predictions close to the original's."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from metarec.cli import main
from metarec.export import compress, dequantize, quantize_rows
from metarec.types import MetarecError
from test_cli_contract import cold_support, make_world

FEW = [
    "--set",
    "text.model='hashing:64'",
    "--set",
    "text.pca_dim=16",
    "--set",
    "train.steps=6",
    "--set",
    "train.eval_every=3",
    "--set",
    "train.meta_batch=8",
    "--set",
    "progress=false",
]


def test_quantize_rows_known_answer():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    q, scale = quantize_rows(w)
    # row 0: scale 2/127; 1/(2/127) = 63.5 -> 64 (half to even), -2 -> -127, 0.5 -> 31.75 -> 32
    assert q.dtype == torch.int8 and q.tolist() == [[64, -127, 32], [0, 0, 0]]
    assert torch.allclose(scale, torch.tensor([2 / 127, 1.0]))
    back = q.float() * scale[:, None]
    assert (back - w).abs().max() <= (2 / 127) / 2 + 1e-7  # at most half a step


def test_compress_keeps_log_and_integers_and_round_trips():
    g = torch.Generator().manual_seed(0)
    tensors = {
        "rank.mlp.0.w": torch.randn(64, 32, generator=g),  # 2048 elements: int8
        "rank.mlp.0.b": torch.randn(128, generator=g),  # 1-D: fp16
        "rank.mlp.1.w": torch.randn(8, 16, generator=g),  # small 2-D: fp16
        "rank.head.w": torch.randn(4, 1, generator=g),  # <= 64 values: exact
        "blend.rating_weights": torch.tensor([0.3, 0.71234567], dtype=torch.float64),  # exact
        "train.rating": torch.tensor([4.5, 3.25]),  # the log stays exact
        "known_items": torch.tensor([1, 0], dtype=torch.uint8),
    }
    stored, spec = compress(tensors, "int8")
    assert spec == {
        "dtype": "int8",
        "int8": ["rank.mlp.0.w"],
        "fp16": ["rank.mlp.0.b", "rank.mlp.1.w"],
    }
    assert stored["rank.mlp.0.w::int8"].dtype == torch.int8
    assert stored["rank.mlp.0.b"].dtype == torch.float16
    assert stored["train.rating"] is tensors["train.rating"]
    # a few values, stored as they are: the blend's stack weights multiply inputs on the
    # rating scale's level (fp16 moved a 1001-1005 log's predictions by 0.33 stars)
    for name in ("rank.head.w", "blend.rating_weights"):
        assert stored[name] is tensors[name]
    back = dequantize(stored, spec)
    assert set(back) == set(tensors)
    assert all(back[k].dtype == tensors[k].dtype for k in tensors)
    w = tensors["rank.mlp.0.w"]
    step = w.abs().amax(1, keepdim=True) / 127
    assert ((back["rank.mlp.0.w"] - w).abs() <= step / 2 + 1e-6).all()
    assert torch.allclose(back["rank.mlp.0.b"], tensors["rank.mlp.0.b"], rtol=1e-3, atol=1e-4)
    with pytest.raises(MetarecError, match="already exported"):
        compress(stored, "fp16")
    with pytest.raises(MetarecError, match="'int4' is not one of fp16, int8"):
        compress(tensors, "int4")
    with pytest.raises(MetarecError, match="missing tensor"):
        dequantize({}, spec)


def test_int8_quantizes_2d_tensors_only_large_1d_and_3d_ones_go_fp16():
    """int8 stores one scale per row, so only 2-D tensors are quantized: a 1-D table or
    a 3-D tensor past INT8_MIN_NUMEL is stored as fp16 and comes back within fp16's
    rounding (mutation audit, probe 147: every test's 1-D tensor was under 1024 values,
    so quantizing any ndim passed)."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "item_bias": torch.randn(2000, generator=g),  # 1-D, 2000 values
        "w3": torch.randn(4, 16, 32, generator=g),  # 3-D, 2048 values
        "w2": torch.randn(64, 32, generator=g),  # 2-D, 2048 values: int8
    }
    stored, spec = compress(tensors, "int8")
    assert spec == {"dtype": "int8", "int8": ["w2"], "fp16": ["item_bias", "w3"]}
    assert stored["item_bias"].dtype == stored["w3"].dtype == torch.float16
    assert stored["item_bias"].shape == (2000,) and stored["w3"].shape == (4, 16, 32)
    back = dequantize(stored, spec)
    for name in ("item_bias", "w3"):
        assert back[name].dtype == torch.float32 and back[name].shape == tensors[name].shape
        assert torch.allclose(back[name], tensors[name], rtol=1e-3, atol=1e-4), name


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    paths, _ = make_world(tmp, n_users=60, n_items=400)
    run = tmp / "RUN"
    args = ["fit", "--train", str(paths["T"]), "--items", str(paths["I"]), "--out", str(run)]
    assert main(args + FEW) == 0
    return tmp, run


def _predict(tmp, run, name):
    q = pd.DataFrame(
        [(u, f"it{i}") for u in ("new_space", "new_garden") for i in range(40)],
        columns=["user_id", "item_id"],
    )
    q.to_csv(tmp / "Q.csv", index=False)
    out = tmp / f"{name}.csv"
    args = ["predict", "--run", str(run), "--support", str(cold_support(tmp))]
    assert main(args + ["--query", str(tmp / "Q.csv"), "--out", str(out)]) == 0
    return pd.read_csv(out).score.to_numpy()


@pytest.mark.parametrize("dtype,tol", [("fp16", 0.01), ("int8", 0.1)])
def test_exported_run_is_smaller_and_predicts_alike(fitted, dtype, tol, capsys):
    tmp, run = fitted
    out = tmp / f"RUN_{dtype}"
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--dtype", dtype, "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes_after"] < report["bytes_before"]
    assert report["ratio"] < (0.8 if dtype == "fp16" else 0.7)
    assert report["validation_users"] > 0
    assert set(report["metric_change"]) == {"rmse", "auc", "mean_score"}
    assert abs(report["metric_change"]["rmse"]) < tol
    stored = load_file(str(out / "model.safetensors"))
    if dtype == "int8":
        assert "features.item_text" in report["int8_tensors"]
        assert stored["features.item_text::int8"].dtype == torch.int8
        assert stored["rank.item_id::int8"].dtype == torch.int8
    else:
        assert stored["features.item_text"].dtype == torch.float16
    assert stored["train.rating"].dtype == torch.float32  # the training log stays exact
    base = _predict(tmp, run, "base")
    small = _predict(tmp, out, dtype)
    assert abs(base - small).max() < tol  # ratings on a 1..5 scale
    assert base.std() > 0.05  # a trained model, not a constant
    # exporting an exported RUN is refused
    assert main(["export", "--run", str(out), "--dtype", "fp16", "--out", str(tmp / "x")]) == 2
    # the server says in which precision the RUN is stored (/info)
    from fastapi.testclient import TestClient

    from metarec.predictor import Predictor
    from metarec.serve.app import create_app

    for path, want in ((out, dtype), (run, None)):
        pred = Predictor.load(path)
        assert pred.exported == want
        with TestClient(create_app(pred)) as client:
            assert client.get("/info").json()["exported"] == want


def _exported(fitted, dtype):
    tmp, run = fitted
    out = tmp / f"RUN_{dtype}_x"
    if not out.exists():
        assert main(["export", "--run", str(run), "--dtype", dtype, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_update_of_an_exported_run_writes_an_ordinary_loadable_run(fitted, dtype, capsys):
    # Predictor.load dequantises; the RUN saved from it (update) is fp32 and must say so:
    # int8's kept "export" record made it unloadable, fp16's made export refuse it
    from metarec.predictor import Predictor
    from metarec.serve.feedback import FeedbackRow, FeedbackStore

    tmp, _ = fitted
    src = _exported(fitted, dtype)
    fb = tmp / f"fb_{dtype}"
    FeedbackStore(fb).add("new_fan", [FeedbackRow("it0", 5.0, None), FeedbackRow("it1", 1.0, None)])
    new = tmp / f"RUN_{dtype}_updated"
    args = ["update", "--run", str(src), "--feedback", str(fb), "--out", str(new)]
    assert main(args + ["--steps", "2"]) == 0
    assert "export" not in json.loads((new / "meta.json").read_text())
    assert "export" not in Predictor.load(src).info
    assert len(_predict(tmp, new, f"upd_{dtype}")) == 80
    capsys.readouterr()
    assert (
        main(["export", "--run", str(new), "--dtype", "fp16", "--out", str(tmp / f"re_{dtype}")])
        == 0
    )


def _damage(src, dst, edit_meta=None, edit_tensors=None):
    import hashlib
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    if edit_meta:
        meta = json.loads((dst / "meta.json").read_text())
        edit_meta(meta)
        (dst / "meta.json").write_text(json.dumps(meta))
    if edit_tensors:
        t = load_file(str(dst / "model.safetensors"))
        edit_tensors(t)
        run_id = json.loads((dst / "manifest.json").read_text())["run_id"]
        save_file(t, str(dst / "model.safetensors"), metadata={"run_id": run_id})
    man = json.loads((dst / "manifest.json").read_text())
    for name in ("meta.json", "model.safetensors"):  # damage the checksums cannot see
        man["files"][name] = hashlib.sha256((dst / name).read_bytes()).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(man))
    return dst


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _scale(fn):
    return lambda t: t.__setitem__("rank.item_id::scale", fn(t["rank.item_id::scale"]))


@pytest.mark.parametrize(
    "meta, tensors, said",
    [
        (_set("export", "int8"), None, "export record is damaged"),
        (_set("export", ["int8"]), None, "export record is damaged"),
        (lambda m: m["export"].__setitem__("int8", [1]), None, "export record is damaged"),
        (None, _scale(lambda s: s[:-1].clone()), "scales for"),
        (None, _scale(lambda s: s[0].clone()), "scales for"),
        (None, _scale(lambda s: torch.full_like(s, float("nan"))), "non-finite scale"),
    ],
    ids=["str", "list", "int-name", "short-scale", "0d-scale", "nan-scale"],
)
def test_damaged_export_records_are_one_line_errors(fitted, meta, tensors, said, capsys):
    tmp, _ = fitted
    bad = _damage(_exported(fitted, "int8"), tmp / f"bad_{len(list(tmp.iterdir()))}", meta, tensors)
    capsys.readouterr()
    args = ["recommend", "--run", str(bad), "--support", str(cold_support(tmp)), "-k", "2"]
    assert main(args + ["--out", str(tmp / "R.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and "Traceback" not in err


def test_export_and_update_refuse_an_out_inside_the_run(fitted, capsys):
    tmp, run = fitted
    before = sorted(p.name for p in run.iterdir())
    assert main(["export", "--run", str(run), "--dtype", "fp16", "--out", str(run / "sub")]) == 2
    assert "is inside the RUN" in capsys.readouterr().err
    args = ["update", "--run", str(run), "--feedback", str(tmp / "none"), "--out", str(run / "u")]
    assert main(args) == 2
    assert "is inside the RUN" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before


def test_export_without_validation_users_still_exports(fitted, monkeypatch, capsys):
    # a RUN whose held-out users have no query cannot be compared, but is still exported
    import metarec.export as E

    tmp, run = fitted
    monkeypatch.setattr(E, "validation_metrics", lambda *a, **k: None)
    out = tmp / "RUN_nov"
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--dtype", "fp16", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["validation_users"] == 0 and report["metric_change"] is None
    assert "no validation users" in report["note"]
    assert len(_predict(tmp, out, "nov")) == 80


def test_the_export_check_judges_likes_as_relevance_does(fitted, monkeypatch):
    """validation_metrics' AUC labels a query item a like through is_relevant (float32),
    as fit and evaluate do: at a like threshold that float32 rounds to 5.0, a 5 is a like
    there and here alike, and the AUC is the one at 5.0 (probe 155)."""
    from metarec.export import validation_metrics
    from metarec.predictor import Predictor

    _, run = fitted
    pred = Predictor.load(run)
    got = {}
    for like in (5.0, 5.0 + 1e-9):
        monkeypatch.setattr(pred.model, "_like_threshold", lambda like=like: like)
        got[like] = validation_metrics(pred)["auc"]
    assert got[5.0] is not None and got[5.0 + 1e-9] == got[5.0]


def test_values_past_fp16s_range_stay_float32():
    # a rating blend's item biases on a 0-1,000,000 scale overflowed to inf in fp16, and
    # the exported RUN scored inf; such a tensor is now kept in float32, and said so
    bias = torch.full((100,), 1.5)
    bias[7] = -178_859.0
    big = {"blend.item_bias": bias, "w": torch.full((100,), 0.5)}
    for dtype in ("fp16", "int8"):
        stored, spec = compress(big, dtype)
        assert stored["blend.item_bias"].dtype == torch.float32
        assert spec["fp32"] == ["blend.item_bias"] and spec["fp16"] == ["w"]
        back = dequantize(stored, spec)
        assert back["blend.item_bias"].tolist() == bias.tolist()


def test_a_broken_export_is_refused_before_anything_is_written(fitted, monkeypatch, capsys):
    # the export is loaded and measured in memory first: one that scored NaN replaced a
    # good RUN at --out with exit 0 (its report printing "rmse": NaN)
    import metarec.export as E

    tmp, run = fitted
    out = tmp / "RUN_keep"
    assert main(["export", "--run", str(run), "--dtype", "fp16", "--out", str(out)]) == 0
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real = E.compress

    def nan_weights(tensors, dtype):
        stored, spec = real(tensors, dtype)
        name = next(n for n in spec["fp16"] if "train." not in n)
        stored[name] = torch.full_like(stored[name], float("nan"))
        return stored, spec

    monkeypatch.setattr(E, "compress", nan_weights)
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--dtype", "fp16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nothing was written" in err and err.count("\n") == 1, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files


def test_export_checks_out_before_the_work_and_notes_a_refitted_run(fitted, capsys):
    tmp, run = fitted
    junk = tmp / "junk"
    junk.mkdir()
    (junk / "x").write_text("mine")
    assert main(["export", "--run", str(run), "--dtype", "int8", "--out", str(junk)]) == 2
    assert "refusing to replace it" in capsys.readouterr().err
    assert (junk / "x").read_text() == "mine"
    # a refitted RUN trained on its validation users: the figures say they are in-sample
    paths = {"T": tmp / "T.csv", "I": tmp / "I.csv"}
    refit = tmp / "RUN_refit"
    args = ["fit", "--train", str(paths["T"]), "--items", str(paths["I"]), "--out", str(refit)]
    assert main([*args, *FEW, "--set", "refit=true"]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(refit), "--dtype", "fp16", "--out", str(tmp / "X")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "refitted" in report["note"] and "in-sample" in report["note"]


def test_an_export_scoring_some_validation_users_nan_says_so(fitted, monkeypatch, capsys):
    """Weights that pass the load check but score one validation user NaN: the metrics
    refuse NaN, and the refusal ("rmse: y_pred holds NaN") had pre-empted the export's
    own message, which names the export and says nothing was written."""
    import numpy as np

    from metarec.predictor import Predictor

    tmp, run = fitted
    real_from_run = Predictor.from_run.__func__

    def from_run(cls, src, device=None):
        pred = real_from_run(cls, src, device)
        if src.meta.get("export"):
            model, real = pred.model, pred.model.score_many

            def score_many(tasks, items):
                out = real(tasks, items)
                out[1] = out[1] * np.nan
                return out

            model.score_many = score_many
        return pred

    monkeypatch.setattr(Predictor, "from_run", classmethod(from_run))
    out = tmp / "RUN_nan"
    assert main(["export", "--run", str(run), "--dtype", "fp16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "export fp16: the exported model scores the validation users NaN or inf" in err
    assert "nothing was written" in err and not out.exists()
