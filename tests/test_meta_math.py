"""Meta-gradients against closed forms, finite differences and the per-task loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meta_synthetic import make_problem
from metarec.meta import (
    MetaConfig,
    MetaLearner,
    build_inputs,
    inner_loop,
    make_episode,
    pad_episodes,
)
from metarec.models.scorer import Scorer, ScorerConfig


def _quadratic_meta_grad(theta0: float, first_order: bool, steps: int, lr: float):
    # support loss a(θ−c)², query loss b(φ−d)²: φ_n − c = (1−2aα)^n (θ−c)
    a, c, b, d = 1.5, 2.0, 0.7, -1.0
    theta = torch.tensor([theta0], dtype=torch.float64, requires_grad=True)
    fast = inner_loop(
        lambda p: a * (p["w"] - c) ** 2,  # (T=1,) after the loop gives w shape (1, 1)
        {"w": theta},
        ["w"],
        1,
        steps,
        {"w": lr},
        first_order,
    )
    phi = fast["w"].reshape(())
    (g,) = torch.autograd.grad(b * (phi - d) ** 2, theta)
    shrink = (1 - 2 * a * lr) ** steps
    phi_expected = c + shrink * (theta0 - c)
    dq = 2 * b * (phi_expected - d)
    return float(phi.detach()), float(g), phi_expected, dq * shrink, dq


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_and_fomaml_match_closed_form(steps):
    phi, g2, phi_exp, maml_exp, _ = _quadratic_meta_grad(0.5, False, steps, 0.1)
    assert phi == pytest.approx(phi_exp, abs=1e-12)
    assert g2 == pytest.approx(maml_exp, abs=1e-12)
    # FOMAML: the same with the Hessian term (1 − 2aα)^n dropped
    _, g1, _, _, fomaml_exp = _quadratic_meta_grad(0.5, True, steps, 0.1)
    assert g1 == pytest.approx(fomaml_exp, abs=1e-12)


def _problem(head="binary", dtype=torch.float64, n_tasks=5, hidden=(7, 5)):
    split, feats = make_problem(0, head)
    sc = Scorer(
        ScorerConfig(
            d_item_text=8,
            n_items=40,
            embed_dim=6,
            hidden=hidden,
            head=head,
            output_offset=3.0 if head == "rating" else 0.0,
        )
    )
    rng = np.random.default_rng(0)
    eps = []
    for t in split.valid[:n_tasks]:
        k = 3 + len(eps) % 3  # unequal support sizes exercise the padding masks
        eps.append(
            make_episode(
                t.user_idx,
                t.support.item_idx[:k],
                t.support.rating[:k],
                t.query.item_idx,
                t.query.rating,
                head=head,
                n_items=40,
                rng=rng,
            )
        )
    known = np.ones(40, dtype=bool)
    known[:4] = False  # a few cold items
    x = build_inputs(sc, feats, pad_episodes(eps), known)
    x = type(x)(
        *(
            v.to(dtype) if v.is_floating_point() else v
            for v in (getattr(x, f) for f in x.__dataclass_fields__)
        )
    )
    return sc, x


def _learner(sc, algo, **kw):
    ml = MetaLearner(
        sc, MetaConfig(algorithm=algo, inner_steps=kw.pop("steps", 2), inner_lr=0.1, **kw)
    )
    p = {k: v.double() for k, v in ml.init_params(torch.Generator().manual_seed(3)).items()}
    return ml, p


def test_maml_meta_gradient_equals_finite_differences():
    sc, x = _problem()
    ml, p = _learner(sc, "maml")
    _, grads = ml.meta_grads(p, x)

    def f(params):
        return float(ml.query_losses(ml.adapt(params, x), x).mean())

    eps = 1e-6
    for key, idx in [
        ("mlp.0.w", (2, 3)),
        ("user_proj.w", (1, 0)),
        ("head.b", (0,)),
        ("item_id", (7, 2)),
        ("item_proj.w", (5, 4)),
        ("user_vec", (1,)),
    ]:
        plus, minus = dict(p), dict(p)
        plus[key] = p[key].clone()
        plus[key][idx] += eps
        minus[key] = p[key].clone()
        minus[key][idx] -= eps
        fd = (f(plus) - f(minus)) / (2 * eps)
        assert grads[key][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-8), key


def test_fomaml_is_query_gradient_at_adapted_params():
    # FOMAML's meta-gradient = mean over tasks of ∇_φ L_query(φ_t): MAML without Hessian terms
    sc, x = _problem()
    ml, p = _learner(sc, "fomaml")
    _, grads = ml.meta_grads(p, x)
    fast = {k: v.detach().requires_grad_(True) for k, v in ml.adapt(p, x).items()}
    loss = ml.query_losses(fast, x).mean()
    keys = ml.adapt_keys(p)
    g_phi = torch.autograd.grad(loss, [fast[k] for k in keys])
    for k, g in zip(keys, g_phi, strict=True):
        assert torch.allclose(grads[k], g.sum(0), atol=1e-12), k
    # and it differs from second-order MAML (the Hessian terms are not zero here)
    ml2, _ = _learner(sc, "maml")
    _, g2 = ml2.meta_grads(p, x)
    assert not torch.allclose(g2["mlp.0.w"], grads["mlp.0.w"], atol=1e-8)


def test_reptile_update_is_theta_minus_phi():
    sc, x = _problem()
    ml, p = _learner(sc, "reptile", steps=3)
    _, grads = ml.meta_grads(p, x)
    fast = ml.adapt(p, x.merged())  # Reptile adapts on the whole task
    for k in ml.adapt_keys(p):
        assert torch.allclose(grads[k], (p[k] - fast[k]).mean(0), atol=1e-12), k


@pytest.mark.parametrize("algo", ["maml", "fomaml", "meta_sgd", "melu"])
@pytest.mark.parametrize("head", ["binary", "rating"])
def test_batched_equals_per_task_loop(algo, head):
    sc, x = _problem(head, torch.float32, n_tasks=6)
    ml = MetaLearner(sc, MetaConfig(algorithm=algo, inner_steps=3, inner_lr=0.05))
    p = ml.init_params(torch.Generator().manual_seed(0))
    loss_b, g_b = ml.meta_grads(p, x)
    loss_l, g_l = ml.loop_meta_grads(p, x)
    assert float(loss_b) == pytest.approx(float(loss_l), abs=1e-5)
    assert set(g_b) == set(g_l)
    for k in g_b:
        assert torch.allclose(g_b[k], g_l[k], atol=1e-5, rtol=1e-4), k


# a last hidden layer of 5 (6 head weights) against supports of 3-5 rows solves the K x K
# dual system; a layer of 2 (3 weights) the primal one
@pytest.mark.parametrize("hidden", [(7, 5), (7, 2)])
def test_ridge_head_is_the_exact_ridge_solution(hidden):
    sc, x = _problem("rating", hidden=hidden)
    ml, p = _learner(sc, "ridge")
    fast = ml.adapt(p, x)
    lam = float(p["ridge.log_lambda"].exp())
    h = sc.hidden(p, x.user_x, x.s_x, x.s_rows).detach().numpy()
    bias = sc.bias_term(p, x.s_rows).detach().numpy()
    w0 = np.r_[p["head.w"].numpy().ravel(), p["head.b"].numpy()]
    for t in range(x.n_tasks):
        m = x.s_mask[t].numpy() > 0
        ha = np.c_[h[t][m], np.ones(m.sum())]
        y = x.s_y[t].numpy()[m] - bias[t][m]
        # ridge with prior w0 = least squares on [H; √λ I] w ≈ [y; √λ w0]
        A = np.r_[ha, np.sqrt(lam) * np.eye(ha.shape[1])]
        rhs = np.r_[y, np.sqrt(lam) * w0]
        w = np.linalg.lstsq(A, rhs, rcond=None)[0]
        got = np.r_[fast["head.w"][t].numpy().ravel(), fast["head.b"][t].numpy()]
        np.testing.assert_allclose(got, w, atol=1e-9)


def test_ridge_meta_gradient_keeps_float32_precision_at_small_lambda():
    # the (H+1) x (H+1) normal equations have λ-only eigenvalues when K < H+1: in float32
    # their meta-gradient was 3% off at λ = 1e-4 and 1e9-fold off at 1e-6 (probe 115)
    out = {}
    for dtype in (torch.float64, torch.float32):
        sc, x = _problem("rating", dtype=dtype, hidden=(16, 12))
        ml, p = _learner(sc, "ridge")
        p = {k: v.to(dtype) for k, v in p.items()}
        p["ridge.log_lambda"] = torch.full((1,), math.log(1e-4), dtype=dtype)
        p = {k: v.requires_grad_() for k, v in p.items()}
        out[dtype] = ml.meta_grads(p, x)
    (l64, g64), (l32, g32) = out[torch.float64], out[torch.float32]
    assert float(l32) == pytest.approx(float(l64), rel=1e-4)
    num = sum(float((g32[k].double() - g64[k]).pow(2).sum()) for k in g64)
    den = sum(float(g64[k].pow(2).sum()) for k in g64)
    assert math.sqrt(num / den) < 1e-3


def test_a_learned_ridge_lambda_below_the_floor_is_held_at_it():
    # λ is learned in log space and may drift below the configured floor
    from metarec.meta.algorithms import MIN_RIDGE_LAMBDA

    sc, x = _problem("rating")
    ml, p = _learner(sc, "ridge")
    at_floor = ml.adapt({**p, "ridge.log_lambda": torch.zeros(1, dtype=torch.float64) - 40.0}, x)
    below = ml.adapt({**p, "ridge.log_lambda": torch.zeros(1, dtype=torch.float64) - 60.0}, x)
    assert torch.isfinite(below["head.w"]).all()
    assert torch.equal(below["head.w"], at_floor["head.w"])
    # the gradient still reaches λ there (straight through the hold): a clamp passed
    # none, so a λ at or below the floor could never grow back
    lam = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    q = {**p, "ridge.log_lambda": lam - 40.0}
    (g,) = torch.autograd.grad(ml.adapt(q, x, keep_graph=True)["head.w"].sum(), lam)
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0
    # and it is the floor's solution: λ = 1e-4 given as such
    given = torch.full((1,), math.log(MIN_RIDGE_LAMBDA), dtype=torch.float64)
    torch.testing.assert_close(
        ml.adapt({**p, "ridge.log_lambda": given}, x)["head.w"], below["head.w"]
    )


def test_gradient_adaptation_under_inference_mode_is_one_clear_error():
    # enable_grad does not lift inference mode: autograd failed with "element 0 of tensors
    # does not require grad" on the autograd path (a scorer without hidden layers)
    from metarec.meta import TaskInputs
    from metarec.types import MetarecError

    g = torch.Generator().manual_seed(0)
    t, k = 2, 3
    ones, rows = torch.ones(t, k), torch.zeros(t, k, dtype=torch.long)
    x = TaskInputs(
        torch.randn(t, 4, generator=g),
        torch.randn(t, k, 4, generator=g),
        rows,
        ones,
        ones,
        torch.randn(t, k, 4, generator=g),
        rows,
        ones,
        ones,
    )
    ml = MetaLearner(Scorer(ScorerConfig(d_item_text=4, embed_dim=4, hidden=())), MetaConfig())
    p = ml.init_params(g)
    with torch.no_grad():
        assert torch.isfinite(ml.adapt(p, x)["head.w"]).all()
    with torch.inference_mode(), pytest.raises(MetarecError, match="outside torch.inference_mode"):
        ml.adapt(p, x)


def test_a_configured_ridge_lambda_below_the_floor_is_held_with_a_warning():
    # 1e-9 crashed fit on a singular solve, or wrote a RUN that no longer loaded; refusing
    # it would refuse older RUNs saved with such a λ, so it is held at the floor
    from metarec.meta.algorithms import MIN_RIDGE_LAMBDA

    sc, x = _problem("rating")
    ml = MetaLearner(sc, MetaConfig(algorithm="ridge", ridge_lambda=1e-9))
    with pytest.warns(UserWarning, match="ridge_lambda 1e-09 is below 0.0001"):
        p = ml.init_params(torch.Generator().manual_seed(3))
    p = {k: v.double() for k, v in p.items()}
    got = ml.adapt(p, x)["head.w"]
    floor = {
        **p,
        "ridge.log_lambda": torch.full((1,), math.log(MIN_RIDGE_LAMBDA), dtype=torch.float64),
    }
    torch.testing.assert_close(got, ml.adapt(floor, x)["head.w"])
    # other algorithms never read it: no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MetaLearner(sc, MetaConfig(algorithm="maml", ridge_lambda=1e-9)).init_params()
