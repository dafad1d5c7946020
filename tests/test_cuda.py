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
