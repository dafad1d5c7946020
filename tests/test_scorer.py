"""Scorer: hand-computed outputs, per-task weights, cold-item masking, losses, config."""

from __future__ import annotations

import math

import pytest
import torch

from metarec.models.scorer import Scorer, ScorerConfig, param_group
from metarec.types import MetarecError


def test_linear_scorer_matches_hand_computation():
    # no MLP, no projection: output = head.w · [u; i] + head.b
    sc = Scorer(
        ScorerConfig(
            d_item_text=2,
            d_user_side=1,
            embed_dim=0,
            use_profile=False,
            user_vector=False,
            interaction=False,
            hidden=(),
            head="rating",
        )
    )
    p = sc.init_params(torch.Generator().manual_seed(0))
    p["head.w"] = torch.tensor([[2.0], [1.0], [-1.0]])
    p["head.b"] = torch.tensor([0.5])
    user_x = torch.tensor([[3.0]])  # (T=1, 1)
    item_x = torch.tensor([[[1.0, 2.0], [0.0, 4.0]]])  # (1, N=2, 2)
    out = sc.apply(p, user_x, item_x, torch.zeros(1, 2, dtype=torch.int64))
    # 2*3 + 1*1 - 1*2 + 0.5 = 5.5 ; 6 + 0 - 4 + 0.5 = 2.5
    assert out.tolist() == [[5.5, 2.5]]


def _cfg(**kw) -> ScorerConfig:
    base = dict(d_item_text=4, d_user_side=3, n_items=6, embed_dim=5, hidden=(7, 3))
    base.update(kw)
    return ScorerConfig(**base)


def _inputs(t: int = 3, n: int = 4):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(t, 3 + 4, generator=g),  # user side + profile
        torch.randn(t, n, 4, generator=g),
        torch.randint(0, 6, (t, n), generator=g),
    )


def test_per_task_copies_give_the_shared_output():
    sc = Scorer(_cfg())
    p = sc.init_params(torch.Generator().manual_seed(0))
    u, x, rows = _inputs()
    shared = sc.apply(p, u, x, rows)
    stacked = {k: v.expand(3, *v.shape).clone() for k, v in p.items()}
    assert torch.allclose(sc.apply(stacked, u, x, rows), shared, atol=1e-6)
    # changing task 1's copy of a decision weight changes only task 1's scores
    stacked["mlp.1.w"][1] += 1.0
    out = sc.apply(stacked, u, x, rows)
    assert torch.allclose(out[[0, 2]], shared[[0, 2]], atol=1e-6)
    assert not torch.allclose(out[1], shared[1])


def test_cold_items_get_no_id_embedding_or_bias():
    sc = Scorer(_cfg())
    p = sc.init_params(torch.Generator().manual_seed(0))
    known = torch.tensor([True, True, True, False, True, True])
    items = torch.tensor([[0, 3]])
    rows = sc.item_rows(items, known)
    assert rows.tolist() == [[0, 6]]  # item 3 -> the unknown row n_items
    u, x, _ = _inputs(1, 2)
    before = sc.apply(p, u, x, rows)
    # whatever the unknown row holds, a cold item's score only depends on its text
    p2 = dict(p, item_id=p["item_id"].clone(), item_bias=p["item_bias"].clone())
    p2["item_id"][6] = 100.0
    p2["item_bias"][6] = 100.0
    p2["item_bias"][0] = 1.0  # a warm item's bias is added
    after = sc.apply(p2, u, x, rows)
    assert after[0, 1] == before[0, 1]
    assert torch.isclose(after[0, 0], before[0, 0] + 1.0)


def test_losses_masked_mean_known_values():
    sc_b = Scorer(_cfg(head="binary"))
    out = torch.zeros(2, 3)
    y = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # logits 0 -> BCE log 2 on valid rows; a task without rows has loss 0, not NaN
    assert torch.allclose(sc_b.task_losses(out, y, mask), torch.tensor([math.log(2), 0.0]))
    sc_r = Scorer(_cfg(head="rating"))
    pred = torch.tensor([[3.0, 5.0, 1.0]])
    assert (
        sc_r.task_losses(pred, torch.tensor([[4.0, 3.0, 9.0]]), torch.tensor([[1.0, 1, 0]])).item()
        == 2.5
    )


def test_closed_form_loss_gradient_known_values():
    # rating: d/d out of mean (out − y)² over 2 valid rows = (out − y); padding row gets 0
    sc_r = Scorer(_cfg(head="rating"))
    pred, y = torch.tensor([[3.0, 5.0, 1.0]]), torch.tensor([[4.0, 3.0, 9.0]])
    w = sc_r.row_weights(torch.tensor([[1.0, 1, 0]]))
    assert torch.equal(w, torch.tensor([[0.5, 0.5, 0.0]]))
    assert torch.equal(sc_r.row_loss_grad(pred, y, w), torch.tensor([[-1.0, 2.0, 0.0]]))
    # binary: (σ(out) − y) / n, and it is autograd's gradient of task_losses
    sc_b = Scorer(_cfg(head="binary"))
    out = torch.tensor([[0.0, 2.0], [-1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    yb = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    got = sc_b.row_loss_grad(out.detach(), yb, sc_b.row_weights(mask))
    assert got[0, 0].item() == pytest.approx(-0.25)  # (σ(0) − 1) / 2
    (auto,) = torch.autograd.grad(sc_b.task_losses(out, yb, mask).sum(), out)
    assert torch.allclose(got, auto, atol=1e-15)


def test_param_groups_and_config_errors():
    p = Scorer(_cfg()).init_params()
    groups = {k: param_group(k) for k in p}
    assert groups["item_id"] == groups["item_bias"] == "embedding"
    assert groups["item_proj.w"] == groups["user_proj.b"] == "projection"
    assert groups["user_vec"] == "user"
    assert {groups[k] for k in p if k.startswith(("mlp", "head"))} == {"decision"}
    with pytest.raises(MetarecError, match="interaction"):
        ScorerConfig(d_item_text=4, d_user_side=3, embed_dim=0)
    with pytest.raises(MetarecError, match="unknown config key 'scorer.hiden'"):
        ScorerConfig.from_dict({"d_item_text": 4, "hiden": [3]})
    assert ScorerConfig.from_dict({"d_item_text": 4, "hidden": [3]}).hidden == (3,)


def test_softmax_loss_known_values_and_edge_cases():
    """Each positive against its task's negatives: −log(e^{s_p} / (e^{s_p} + Σ_n e^{s_n}))."""
    sc = Scorer(ScorerConfig(d_item_text=2, d_user_side=2, loss="softmax"))
    out = torch.tensor(
        [[2.0, 0.0, 1.0, 5.0], [1.0, 3.0, 0.0, 0.0], [0.5, -0.5, 0.0, 0.0]], requires_grad=True
    )
    y = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # task 0: the last row is padding; task 1: two positives, one negative (the third row);
    # task 2: no negative in its mask at all
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    got = sc.task_losses(out, y, mask)
    t0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(1)))
    t1 = 0.5 * (math.log1p(math.exp(0 - 1)) + math.log1p(math.exp(0 - 3)))
    assert got.tolist() == pytest.approx([t0, t1, 0.0], abs=1e-6)
    got.sum().backward()
    assert torch.isfinite(out.grad).all()
    assert out.grad[0, 3] == 0 and out.grad[2].abs().max() < 1e-6  # padding, no negatives
    # the highest-scoring negative takes most of the push down
    assert out.grad[0, 2] > out.grad[0, 1] > 0 and out.grad[0, 0] < 0


def test_softmax_loss_config_errors():
    with pytest.raises(MetarecError, match="binary head only"):
        ScorerConfig(d_item_text=2, d_user_side=2, head="rating", loss="softmax")
    with pytest.raises(MetarecError, match="is not one of"):
        ScorerConfig(d_item_text=2, d_user_side=2, loss="warp")
    sc = Scorer(ScorerConfig(d_item_text=2, d_user_side=2, loss="softmax"))
    with pytest.raises(MetarecError, match="no closed-form row gradient"):
        sc.row_loss_grad(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))


def test_model_rank_loss_needs_the_np_ranking_model():
    from metarec.meta import MetaConfig
    from metarec.model import ModelConfig

    assert ModelConfig(rank_loss="softmax").rank_loss == "softmax"  # NP is the default
    with pytest.raises(MetarecError, match="neural-process ranking model"):
        ModelConfig(rank_loss="softmax", rank_meta=MetaConfig(algorithm="maml"))
    with pytest.raises(MetarecError, match="rank_loss"):
        ModelConfig(rank_loss="hinge")


def test_bce_plus_softmax_is_the_sum_of_both_losses():
    out = torch.tensor([[2.0, 0.0, 1.0], [0.5, -1.0, 0.0]])
    y = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    parts = [
        Scorer(ScorerConfig(d_item_text=2, d_user_side=2, loss=loss)).task_losses(out, y, mask)
        for loss in ("bce", "softmax", "bce+softmax")
    ]
    assert torch.allclose(parts[2], parts[0] + parts[1])
