"""CUDA parity: every meta-algorithm and the CLI give the CPU's answers on a GPU.

These tests run only where a CUDA GPU exists (CI has none; they were run on a lent H100 /
H200 machine, see the README's GPU note). On a CPU machine they skip with that reason; the
no-GPU error path is covered in test_distributed.py and test_cli_contract.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from metarec.meta import ALGORITHMS, MetaConfig, MetaLearner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# float32 on both devices; kernels differ (reduction order, fused ops), so agreement is to
# float32 round-off amplified by a few inner steps, not bit-exact
RTOL, ATOL = 1e-3, 1e-4


@pytest.fixture(autouse=True)
def _no_tf32():
    # TF32 matmuls (10-bit mantissa) would be a real, intended difference, not a bug
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("head", ["binary", "rating"])
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_meta_grads_and_adapt_match_cpu(algorithm, head):
    from test_meta_contract import _inputs

    sc, x = _inputs(head)
    ml = MetaLearner(sc, MetaConfig(algorithm=algorithm, inner_steps=3, inner_lr=0.05))
    p = ml.init_params(torch.Generator().manual_seed(0))
    loss_c, g_c = ml.meta_grads(p, x)
    fast_c = ml.adapt(p, x)
    p_g = {k: v.cuda() for k, v in p.items()}
    x_g = x.to("cuda")
    loss_g, g_g = ml.meta_grads(p_g, x_g)
    fast_g = ml.adapt(p_g, x_g)
    assert loss_g.device.type == "cuda"
    torch.testing.assert_close(loss_g.cpu(), loss_c, rtol=RTOL, atol=ATOL)
    for k in g_c:
        torch.testing.assert_close(g_g[k].cpu(), g_c[k], rtol=RTOL, atol=ATOL, msg=k)
    for k in fast_c:
        torch.testing.assert_close(fast_g[k].cpu(), fast_c[k], rtol=RTOL, atol=ATOL, msg=k)


def test_cli_fit_predict_recommend_on_cuda_match_cpu(tmp_path):
    from metarec.cli import main
    from test_cli_contract import FAST, cold_support, make_world

    paths, _ = make_world(tmp_path)
    support = cold_support(tmp_path)
    q = tmp_path / "Q.csv"
    pd.DataFrame(
        {
            "user_id": ["new_space"] * 4 + ["new_garden"] * 4,
            "item_id": [f"it{i}" for i in range(30, 38)],
        }
    ).to_csv(q, index=False)
    runs = {}
    for dev in ("cpu", "cuda"):
        run = tmp_path / f"RUN_{dev}"
        fit = ["fit", "--train", str(paths["T"]), "--items", str(paths["I"]), "--out", str(run)]
        assert main([*fit, *FAST, "--device", dev]) == 0
        runs[dev] = run
    # a model trained on the GPU loads and serves on the CPU and the other way round
    scores = {}
    for train_dev, run in runs.items():
        for dev in ("cpu", "cuda"):
            out = tmp_path / f"P_{train_dev}_{dev}.csv"
            args = ["--support", str(support), "--query", str(q), "--out", str(out)]
            assert main(["predict", "--run", str(run), *args, "--device", dev]) == 0
            scores[train_dev, dev] = pd.read_csv(out).score.to_numpy()
            rec = tmp_path / f"R_{train_dev}_{dev}.csv"
            r_args = ["--support", str(support), "-k", "5", "--out", str(rec)]
            assert main(["recommend", "--run", str(run), *r_args, "--device", dev]) == 0
            top = pd.read_csv(rec)
            assert len(top) == 10 and set(top.user_id) == {"new_space", "new_garden"}
        # the same saved model scores the same on either device
        np.testing.assert_allclose(
            scores[train_dev, "cuda"], scores[train_dev, "cpu"], rtol=1e-4, atol=1e-4
        )
    # both trainings learned the taste (cold items 30..37: even = space, odd = garden)
    for dev in ("cpu", "cuda"):
        s = scores[dev, "cpu"]
        space, garden = s[:4], s[4:]
        assert space[0::2].mean() > space[1::2].mean(), dev
        assert garden[1::2].mean() > garden[0::2].mean(), dev


@pytest.mark.parametrize("algorithm", ["np", "fomaml"])
def test_ensemble_learner_matches_cpu(algorithm):
    """model.rank_members' EnsembleLearner: meta-gradients and adapted scores on a GPU."""
    from metarec.meta.ensemble import EnsembleLearner
    from test_meta_contract import _inputs

    sc, x = _inputs("binary")
    ens = EnsembleLearner(sc, MetaConfig(algorithm=algorithm, inner_steps=2, inner_lr=0.05), 3)
    p = ens.init_params(torch.Generator().manual_seed(0))
    loss_c, g_c = ens.meta_grads(p, x)
    out_c = ens.predict(ens.adapt(p, x), x.user_x, x.q_x, x.q_rows)
    p_g = {k: v.cuda() for k, v in p.items()}
    x_g = x.to("cuda")
    loss_g, g_g = ens.meta_grads(p_g, x_g)
    out_g = ens.predict(ens.adapt(p_g, x_g), x_g.user_x, x_g.q_x, x_g.q_rows)
    assert out_g.device.type == "cuda"
    torch.testing.assert_close(loss_g.cpu(), loss_c, rtol=RTOL, atol=ATOL)
    for k in g_c:
        torch.testing.assert_close(g_g[k].cpu(), g_c[k], rtol=RTOL, atol=ATOL, msg=k)
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=RTOL, atol=ATOL)


def test_update_fit_on_cuda_features_and_serving_match_cpu(tmp_path):
    """What test_cli_fit_predict_recommend_on_cuda_match_cpu leaves out: update() on a
    Predictor loaded on the GPU (a CPU block was concatenated onto its CUDA user table),
    fit given features already on the GPU (they met CPU parameters in the blend), and the
    blend itself (60 users leave fewer validation users than it needs: 150 here)."""
    pytest.importorskip("fastapi", reason="serve's extra is not installed")
    from fastapi.testclient import TestClient

    from metarec.cli import main
    from metarec.predictor import Predictor
    from metarec.serve.app import create_app
    from metarec.update import UpdateConfig, update
    from test_cli_contract import FAST, cold_support, fit_argv, make_world

    paths, _ = make_world(tmp_path, n_users=150)
    run = tmp_path / "RUN"
    assert main([*fit_argv(paths, run), *FAST]) == 0
    feedback = pd.DataFrame(
        {
            "user_id": ["newbie"] * 4 + ["u0"] * 2,
            "item_id": ["it0", "it1", "it2", "it3", "it4", "it6"],
            "rating": [5.0, 1.0, 5.0, 1.0, 5.0, 5.0],
        }
    )
    support = pd.read_csv(cold_support(tmp_path))
    query = pd.DataFrame(
        {"user_id": ["new_space"] * 4, "item_id": ["it30", "it31", "it32", "it33"]}
    )
    scores, served = {}, {}
    for dev in ("cpu", "cuda"):
        pred = Predictor.load(run, device=dev)
        assert pred.model.blend_ is not None  # the blend is in what runs on the device
        updated, report = update(pred, feedback, UpdateConfig(steps=3))
        assert report["new_users"] == 1
        scores[dev] = updated.predict(support, query)[0].score.to_numpy()
        client = TestClient(create_app(pred, feedback_db=tmp_path / f"fb_{dev}.sqlite"))
        body = {
            "interactions": [{"item_id": "it0", "rating": 5.0}, {"item_id": "it1", "rating": 1.0}],
            "k": 3,
        }
        res = client.post("/recommend", json=body)
        assert res.status_code == 200, res.text
        served[dev] = [(r["item_id"], r["score"]) for r in res.json()["items"]]
    np.testing.assert_allclose(scores["cuda"], scores["cpu"], rtol=1e-4, atol=1e-4)
    assert [i for i, _ in served["cuda"]] == [i for i, _ in served["cpu"]]


def test_fit_given_features_on_cuda_matches_cpu():
    """Features the caller placed on the GPU met the CPU parameters fit returns, in the
    unknown-user row and then in the blend: fit now keeps its model on the CPU."""
    from metarec.features import build_features
    from metarec.model import MetaRecommender
    from metarec.splits import make_split
    from metarec.text.encoder import HashingEncoder
    from test_model import _fast_config, _world

    ds = _world()
    split = make_split(ds, "user-cold", k_shot=6, n_query=8, seed=0)
    known = np.zeros(ds.n_items, bool)
    known[split.train.item_idx] = True
    feats = build_features(ds, HashingEncoder(dim=64), fit_items=known)
    t = split.test[0]
    got = {}
    for dev in ("cpu", "cuda"):
        rec = MetaRecommender(_fast_config()).fit(ds, split.train, feats.to(dev), split.valid)
        assert rec.features_.item_text.device.type == "cpu" and rec.blend_ is not None
        got[dev] = rec.score(t.user_idx, t.support, t.query.item_idx)
    np.testing.assert_allclose(got["cuda"], got["cpu"], rtol=1e-4, atol=1e-4)
