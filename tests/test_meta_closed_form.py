"""The closed-form inner loop (the production path) against its autograd oracle.

``closed_form_inner_loop`` hand-derives the MLP's support-loss gradients and keeps MLP weights
factored (θ − aᵀb). ``inner_loop`` + ``Scorer.apply`` runs the same SGD with
torch.autograd.grad per step. Adapted parameters, meta-gradients (first and second order)
and serving adaptations must agree: 1e-10 in float64, 1e-5 in float32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meta_synthetic import make_problem
from metarec.meta import MetaConfig, MetaLearner, build_inputs, make_episode, pad_episodes
from metarec.meta.bench import bench_scorer, synthetic_inputs
from metarec.meta.inner import (
    Factored,
    closed_form_first_order_meta_grads,
    closed_form_inner_loop,
    closed_form_supported,
    densify,
    inner_loop,
)
from metarec.models.scorer import Scorer, ScorerConfig


def _problem(head: str, dtype=torch.float64, **cfg):
    split, feats = make_problem(0, head)
    kw = dict(d_item_text=8, n_items=40, embed_dim=6, hidden=(7, 5), head=head)
    kw.update(cfg)
    sc = Scorer(ScorerConfig(output_offset=3.0 if head == "rating" else 0.0, **kw))
    rng = np.random.default_rng(0)
    eps = []
    for t in split.valid[:5]:
        k = 3 + len(eps) % 3  # unequal support sizes: padding rows must not count
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
    known[:4] = False
    x = build_inputs(sc, feats, pad_episodes(eps), known)
    x = type(x)(
        *(
            v.to(dtype) if v.is_floating_point() else v
            for v in (getattr(x, f) for f in x.__dataclass_fields__)
        )
    )
    return sc, x


def _oracle_adapt(ml: MetaLearner, params, x):
    """The autograd inner loop on the same settings."""
    return inner_loop(
        lambda p: ml.support_losses(p, x),
        params,
        ml.adapt_keys(params),
        x.n_tasks,
        ml.cfg.inner_steps,
        ml.step_sizes(params),
        ml.first_order,
    )


def _plain_adapt(ml: MetaLearner, params, x):
    """The production inner loop without adapt's serving guard (MetaLearner._backtrack)."""
    with torch.enable_grad():
        out, factored = ml._sgd({k: v.detach() for k, v in params.items()}, x)
    return {k: v.detach() for k, v in densify(out, factored, x.n_tasks).items()}


def _oracle_meta_grads(ml: MetaLearner, params, x):
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    fast = _oracle_adapt(ml, leaves, x)
    loss = ml.query_losses(fast, x).mean()
    gs = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return loss.detach(), {
        k: torch.zeros_like(v) if g is None else g
        for (k, v), g in zip(leaves.items(), gs, strict=True)
    }


def _learner(sc, algo, dtype=torch.float64, **kw):
    ml = MetaLearner(
        sc, MetaConfig(algorithm=algo, inner_steps=kw.pop("steps", 3), inner_lr=0.1, **kw)
    )
    p = {k: v.to(dtype) for k, v in ml.init_params(torch.Generator().manual_seed(3)).items()}
    return ml, p


def test_the_first_order_setting_overrides_the_algorithms_own():
    """MetaConfig.first_order decides, whatever the algorithm's default: the closed-form
    tests read ml.first_order on both sides, so ignoring the setting passed them."""
    sc, x = _problem("rating")
    grads = {}
    for name, algo, kw in (
        ("maml+fo", "maml", {"first_order": True}),
        ("fomaml", "fomaml", {}),
        ("maml", "maml", {}),
        ("fomaml-fo", "fomaml", {"first_order": False}),
    ):
        ml, p = _learner(sc, algo, **kw)
        assert ml.first_order is kw.get("first_order", algo == "fomaml")
        grads[name] = ml.meta_grads(p, x)[1]

    def same(a, b):
        return all(torch.allclose(grads[a][k], grads[b][k], atol=1e-10, rtol=0) for k in grads[a])

    assert same("maml+fo", "fomaml") and same("fomaml-fo", "maml")
    assert not same("maml", "fomaml")


CASES = [
    ("maml", {}),  # projections, user vector and MLP adapt: inputs move, all dense
    ("fomaml", {}),
    ("meta_sgd", {}),  # learned tensor step sizes: dense weights, Σg kept for first order
    ("meta_sgd", {"first_order": True}),
    ("melu", {}),  # decision only: fixed z, factored first layer with the Gram trick
    ("maml", {"adapt_groups": ("decision",), "first_order": True}),
    ("maml", {"adapt_groups": ("user", "decision")}),
    ("maml", {"steps": 0}),
    ("fomaml", {"steps": 1}),
]


@pytest.mark.parametrize("head", ["binary", "rating"])
@pytest.mark.parametrize(("algo", "kw"), CASES)
def test_closed_form_equals_autograd_inner_loop(algo, kw, head):
    sc, x = _problem(head)
    ml, p = _learner(sc, algo, **dict(kw))
    assert closed_form_supported(sc, ml.adapt_keys(p))
    # serving adaptation (no graph; the loop alone: from this random start some steps
    # raise a task's support loss, which adapt's guard would undo, tested below)
    fast, oracle = _plain_adapt(ml, p, x), _oracle_adapt(ml, p, x)
    assert set(fast) == set(oracle)
    for k in fast:
        assert fast[k].shape == oracle[k].shape, k
        assert torch.allclose(fast[k], oracle[k].detach(), atol=1e-10, rtol=0), k
    # adapt itself: the same loop on every task whose support loss the steps did not raise
    served = ml.adapt(p, x)
    with torch.no_grad():
        kept = ml.support_losses(fast, x) <= ml.support_losses(p, x)  # (T,)
    for k in ml.adapt_keys(p):
        assert torch.equal(served[k][kept], fast[k][kept]), k
    # meta-gradients through the loop
    loss, grads = ml.meta_grads(p, x)
    loss_o, grads_o = _oracle_meta_grads(ml, p, x)
    assert float(loss) == pytest.approx(float(loss_o), abs=1e-12)
    for k in grads_o:
        assert torch.allclose(grads[k], grads_o[k], atol=1e-10, rtol=0), k


@pytest.mark.parametrize("algo", ["maml", "meta_sgd"])
def test_an_adaptation_that_raises_its_support_loss_backs_off(algo):
    """Serving guard (MetaLearner._backtrack): a task whose steps raise its support loss
    (here: task 0's support inputs scaled up, so the fixed step overshoots) is adapted
    again at half the step sizes, and left unadapted if even 1/16 of the step raises it;
    every other task is exactly the plain inner loop's. Training keeps the plain loop."""
    from dataclasses import replace

    sc, x = _problem("rating")
    ml = MetaLearner(sc, MetaConfig(algorithm=algo, inner_steps=3, inner_lr=0.03))
    p = {k: v.double() for k, v in ml.init_params(torch.Generator().manual_seed(3)).items()}
    for blow_up, unadapted in ((3.0, False), (1e4, True)):
        s_x = x.s_x.clone()
        s_x[0] *= blow_up
        xb = replace(x, s_x=s_x)
        plain = _plain_adapt(ml, p, xb)  # the same loop without the guard
        with torch.no_grad():
            base, raised = ml.support_losses(p, xb), ml.support_losses(plain, xb)
        assert raised[0] > 100 * base[0] and (raised[1:] < base[1:]).all()
        fast = ml.adapt(p, xb)
        with torch.no_grad():
            got = ml.support_losses(fast, xb)
        assert torch.isfinite(got).all() and (got <= base).all()
        for k in ml.adapt_keys(p):
            assert torch.equal(fast[k][1:], plain[k][1:].detach()), k  # untouched tasks
            assert torch.equal(fast[k][0], p[k]) == unadapted, k
        if not unadapted:  # the meta-gradient's query loss is the unguarded loop's
            loss, _ = ml.meta_grads(p, xb)
            loss_o, _ = _oracle_meta_grads(ml, p, xb)
            assert float(loss) == pytest.approx(float(loss_o), rel=1e-9)
            assert float(loss) > float(ml.query_losses(fast, xb).mean())


@pytest.mark.parametrize("algo", ["maml", "fomaml"])
def test_benchmark_model_float32_matches_autograd(algo):
    # the benchmark's plain MLP: fixed inputs, every MLP weight factored
    sc = bench_scorer(d_user=12, d_item=9)
    x = synthetic_inputs(6, 4, 3, 12, 9, seed=1)
    ml = MetaLearner(sc, MetaConfig(algorithm=algo, inner_steps=5, inner_lr=0.05))
    p = ml.init_params(torch.Generator().manual_seed(0))
    fast, oracle = _plain_adapt(ml, p, x), _oracle_adapt(ml, p, x)
    for k in fast:
        assert torch.allclose(fast[k], oracle[k].detach(), atol=1e-5), k
    _, grads = ml.meta_grads(p, x)
    _, grads_o = _oracle_meta_grads(ml, p, x)
    for k in grads_o:
        assert torch.allclose(grads[k], grads_o[k], atol=1e-5), k


@pytest.mark.parametrize("head", ["binary", "rating"])
@pytest.mark.parametrize("fixed_inputs", [False, True])
def test_first_order_meta_gradient_in_closed_form(head, fixed_inputs):
    # no ID tables: every meta-parameter adapts, so FOMAML's outer gradient is the closed-form
    # query gradient summed over tasks. Moving inputs: projections, user vector and u ⊙ i
    # adapt too; fixed inputs: raw features into the MLP, first layer factored.
    if fixed_inputs:
        sc, x = _problem(head, n_items=0, embed_dim=0, user_vector=False, interaction=False)
    else:
        sc, x = _problem(head, n_items=0)
    ml, p = _learner(sc, "fomaml", steps=3)
    assert set(ml.adapt_keys(p)) == set(p)
    loss, grads = closed_form_first_order_meta_grads(sc, p, x, 3, 0.1)
    loss_o, grads_o = _oracle_meta_grads(ml, p, x)
    assert float(loss) == pytest.approx(float(loss_o), abs=1e-12)
    loss_m, grads_m = ml.meta_grads(p, x)  # the production call takes this path
    assert torch.equal(loss_m, loss)
    for k in grads_o:
        assert torch.allclose(grads[k], grads_o[k], atol=1e-10, rtol=0), k
        assert torch.equal(grads_m[k], grads[k]), k


def test_factored_rank_and_unfactored_paths_agree():
    sc = bench_scorer(d_user=5, d_item=7)
    x = synthetic_inputs(4, 3, 2, 5, 7, seed=2)
    x = type(x)(*(v.double() if v.is_floating_point() else v for v in vars(x).values()))
    ml = MetaLearner(sc, MetaConfig(algorithm="maml", inner_steps=4, inner_lr=0.05))
    p = {k: v.double() for k, v in ml.init_params(torch.Generator().manual_seed(1)).items()}
    keys = ml.adapt_keys(p)
    args = (sc, p, x.user_x, x.s_x, x.s_rows, x.s_y, x.s_mask, keys, 4, ml.step_sizes(p), False)
    low, factored = closed_form_inner_loop(*args, low_rank=True)
    dense, none = closed_form_inner_loop(*args, low_rank=False)
    assert set(factored) == {"mlp.0.w", "mlp.1.w"} and none == {}
    # first layer: fixed input z, so the factor keeps rank K = 3; later layers stack K per step
    assert factored["mlp.0.w"].a.shape == (4, 3, 12)
    assert factored["mlp.1.w"].a.shape == (4, 3 * 4, 64)
    low = densify(low, factored, 4)
    for k in dense:
        assert torch.allclose(low[k], dense[k], atol=1e-12), k


def test_factored_weight_algebra():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(4, 3, generator=g, dtype=torch.float64)
    a = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    b = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    f = Factored(theta, a, b)
    w = torch.stack([theta - a[t].T @ b[t] for t in range(2)])  # (T, in, out) by hand
    x = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    d = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(f.dense(2), w)
    assert torch.allclose(f.matmul(x), x @ w)
    assert torch.allclose(f.matmul_t(d), d @ w.transpose(1, 2))
    # an SGD step W − α xᵀ d, stacked and merged
    stepped = f.step(x, d, 0.1, same_input=False)
    assert stepped.a.shape == (2, 11, 4)
    assert torch.allclose(stepped.dense(2), w - 0.1 * x.transpose(1, 2) @ d)
    merged = Factored(theta, x, d).step(x, d, 0.5, same_input=True)
    assert merged.a.shape == (2, 6, 4)
    assert torch.allclose(merged.dense(2), theta - 1.5 * x.transpose(1, 2) @ d)
    assert torch.equal(Factored(theta, None, None).dense(2), theta.expand(2, 4, 3))
    # rows whose first 2 columns repeat within a task (z = [u; i]): the split product is exact
    xs = torch.cat([torch.randn(2, 1, 2, generator=g).expand(-1, 6, -1), x[..., 2:]], -1)
    xs = xs.to(torch.float64)
    assert torch.allclose(Factored(theta, a, b, shared=2).matmul(xs), xs @ w)


def test_id_tables_fall_back_to_autograd():
    sc, x = _problem("binary")
    ml, p = _learner(sc, "maml", adapt_groups=("embedding", "decision"))
    assert not closed_form_supported(sc, ml.adapt_keys(p))
    fast = ml.adapt(p, x)  # still works, through inner_loop
    assert fast["item_id"].shape == (x.n_tasks, *p["item_id"].shape)
