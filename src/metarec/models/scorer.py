"""The scorer: P(y=1 | u, c) = σ(wᵀ φ(u, c)), or a rating, as a pure function of a param dict.

φ(u, c) = MLP([u; i; u ⊙ i]) where
  i = item representation  = proj([item_text; item_side]) + id_emb[item]   (+ item_bias on the output)
  u = user representation  = proj([user_side; history_profile]) + user_vec

Parameters are plain tensors in a dict (no nn.Module), so meta-algorithms can swap, stack and
differentiate them freely. Every parameter may be given either with its base shape (shared by
all tasks) or with an extra leading task dimension T (one copy per task, as the batched inner
loop produces). The forward detects which by the number of dimensions, so the same code serves
the shared model, the per-task adapted models and a single-task reference loop.

Parameter groups (what an algorithm may choose to adapt in its inner loop):
  "embedding"  item_id (n_items+1, d_i), item_bias (n_items+1,): collaborative warm-item signal.
               The last row is the 'unknown' row used for cold items; it stays zero.
  "projection" item_proj.*, user_proj.*: text/side features -> representation.
  "user"       user_vec (d_u,): a learned user-level vector, the natural thing to adapt per user.
  "decision"   mlp.{l}.*, head.*: the decision layers (MeLU adapts only these).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from metarec.config import coerce_fields
from metarec.features import FeatureSet, history_profile
from metarec.types import MetarecError

Head = Literal["binary", "rating"]
# parameters are float32 whatever torch.set_default_dtype says: the features are float32
# (FeatureSet casts them), and a float64 default made fit fail in baddbmm on mixed dtypes
F32 = torch.float32
LOSSES = ("bce", "softmax", "bce+softmax")  # ScorerConfig.loss
GROUPS = ("embedding", "projection", "user", "decision")
_GROUP_OF_PREFIX = {
    "item_id": "embedding",
    "item_bias": "embedding",
    "item_proj": "projection",
    "user_proj": "projection",
    "user_vec": "user",
    "mlp": "decision",
    "head": "decision",
}


def param_group(name: str) -> str:
    """The group of scorer parameter ``name`` (see module docstring)."""
    try:
        return _GROUP_OF_PREFIX[name.split(".", 1)[0]]
    except KeyError:
        raise MetarecError(f"{name!r} is not a scorer parameter") from None


@dataclass(frozen=True)
class ScorerConfig:
    d_item_text: int  # width of FeatureSet.item_text
    d_item_side: int = 0  # width of FeatureSet.item_side
    d_user_side: int = 0  # width of FeatureSet.user_side
    n_items: int = 0  # rows of the ID tables (+1 unknown row); 0 = no item ID parameters
    embed_dim: int = 32  # projected width of u and i; 0 = use the raw features unprojected
    use_item_id: bool = True  # learned item ID embedding added to i (needs n_items > 0)
    use_item_bias: bool = True  # learned per-item output bias (needs n_items > 0)
    use_profile: bool = True  # history profile of the support items' text in u
    user_vector: bool = True  # learned user-level vector added to u
    interaction: bool = True  # include u ⊙ i in φ (needs equal widths)
    hidden: tuple[int, ...] = (64, 64)
    head: Head = "binary"  # binary: logits for BCE; rating: a rating for MSE (MeLU-style)
    output_offset: float = 0.0  # initial output bias, e.g. the mean training rating
    # binary head: "bce" (each row on its own), "softmax" (each positive row against all
    # of its task's negative rows: a sampled-softmax ranking loss; see task_losses) or
    # "bce+softmax" (their sum: the ranking term, with the logit kept calibrated by BCE)
    loss: str = "bce"

    def __post_init__(self) -> None:
        coerce_fields(self)  # built directly too, as from_dict builds it
        if self.head not in ("binary", "rating"):
            raise MetarecError(f"ScorerConfig.head: {self.head!r} is not 'binary' or 'rating'")
        if self.loss not in LOSSES:
            raise MetarecError(f"ScorerConfig.loss: {self.loss!r} is not one of {LOSSES}")
        if self.loss != "bce" and self.head != "binary":
            raise MetarecError(f"ScorerConfig.loss {self.loss!r} is for the binary head only")
        if min(self.d_item_text, self.d_item_side, self.d_user_side, self.n_items) < 0:
            raise MetarecError("ScorerConfig: widths and n_items must be >= 0")
        if self.d_item_in == 0 and not (self.n_items and self.use_item_id):
            raise MetarecError("ScorerConfig: items have no features and no ID embedding")
        if self.d_user_rep == 0:
            raise MetarecError("ScorerConfig: users have no representation (no side, no profile)")
        if self.interaction and self.d_user_rep != self.d_item_rep:
            raise MetarecError(
                f"ScorerConfig.interaction needs equal user/item widths, got "
                f"{self.d_user_rep} and {self.d_item_rep} (set embed_dim > 0)"
            )

    @classmethod
    def from_dict(cls, data: dict) -> ScorerConfig:
        from metarec.config import from_dict

        return from_dict(cls, data, "scorer")

    @property
    def d_item_in(self) -> int:
        return self.d_item_text + self.d_item_side

    @property
    def d_user_in(self) -> int:
        return self.d_user_side + (self.d_item_text if self.use_profile else 0)

    @property
    def d_item_rep(self) -> int:
        return self.embed_dim or self.d_item_in

    @property
    def d_user_rep(self) -> int:
        return self.embed_dim or self.d_user_in

    @property
    def d_phi(self) -> int:
        return self.d_user_rep + self.d_item_rep + (self.d_item_rep if self.interaction else 0)

    @property
    def has_ids(self) -> bool:
        return self.n_items > 0 and (self.use_item_id or self.use_item_bias)


# ---------------------------------------------------------------------------------------
# Shape-polymorphic building blocks: weights are either shared (base shape) or per task
# (leading T). x always carries the task dimension: (T, N, in).


def affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (T, N, i) @ w [(i, o) or (T, i, o)] + b [(o,) or (T, o)] -> (T, N, o)."""
    if b.dim() == 2:
        b = b.unsqueeze(1)  # (T, 1, o)
    if w.dim() == 3:
        # one fused batched GEMM over the per-task weights: the fast path of the inner loop
        return torch.baddbmm(b, x, w)
    return x @ w + b


def row_times(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(T, 1, o) = v @ w for ONE row per task, v (T, 1, i), w (i, o) or (T, i, o).

    A one-row product is a matrix-vector product, which MKL runs multi-threaded whatever its
    size: on a loaded 2-core machine one call then waits milliseconds for a descheduled thread
    (measured: 2-3 ms p99 for a 128 x 64 product). Multiply-and-sum stays on one thread."""
    if w.dim() == 2:
        w = w.unsqueeze(0)
    return (v.transpose(1, 2) * w).sum(1, keepdim=True)


def linear_head(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(T, N) = h (T, N, H) @ w [(H, 1) or (T, H, 1)] + b [(1,) or (T, 1)], as multiply-and-sum
    for the reason given in :func:`row_times` (one output column is a matrix-vector product)."""
    return (h * w.transpose(-1, -2)).sum(-1) + b


def _rows(table: torch.Tensor, rows: torch.Tensor, base_dim: int) -> torch.Tensor:
    """Gather table rows for (T, N) indices; table is (R, ...) shared or (T, R, ...) per task."""
    if table.dim() == base_dim:
        return table[rows]
    t = torch.arange(rows.shape[0], device=rows.device).unsqueeze(1)  # (T, 1)
    return table[t, rows]


def _vec(v: torch.Tensor, base_dim: int) -> torch.Tensor:
    """A shared (d,) or per-task (T, d) vector as (T or 1, 1, d)."""
    return v.reshape(1, 1, -1) if v.dim() == base_dim else v.unsqueeze(1)


@dataclass(frozen=True)
class Scorer:
    """Pure functions over a parameter dict for one :class:`ScorerConfig`."""

    cfg: ScorerConfig

    # --- parameters --------------------------------------------------------------------
    def init_params(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Fresh parameters (float32, CPU). He-normal for ReLU layers, small head, zero tables."""
        c = self.cfg
        g = generator

        def normal(shape: tuple[int, ...], std: float) -> torch.Tensor:
            return torch.randn(shape, generator=g, dtype=F32) * std

        p: dict[str, torch.Tensor] = {}
        if c.embed_dim:
            p["item_proj.w"] = normal(
                (c.d_item_in, c.embed_dim), 1 / math.sqrt(max(c.d_item_in, 1))
            )
            p["item_proj.b"] = torch.zeros(c.embed_dim, dtype=F32)
            if c.d_user_in:
                p["user_proj.w"] = normal((c.d_user_in, c.embed_dim), 1 / math.sqrt(c.d_user_in))
                p["user_proj.b"] = torch.zeros(c.embed_dim, dtype=F32)
        if c.n_items and c.use_item_id:
            # small random warm rows, zero unknown row (index n_items) for cold items
            t = normal((c.n_items + 1, c.d_item_rep), 0.01)
            t[-1] = 0.0
            p["item_id"] = t
        if c.n_items and c.use_item_bias:
            p["item_bias"] = torch.zeros(c.n_items + 1, dtype=F32)
        if c.user_vector:
            p["user_vec"] = torch.zeros(c.d_user_rep, dtype=F32)
        d = c.d_phi
        for li, h in enumerate(c.hidden):
            p[f"mlp.{li}.w"] = normal((d, h), math.sqrt(2.0 / d))
            p[f"mlp.{li}.b"] = torch.zeros(h, dtype=F32)
            d = h
        p["head.w"] = normal((d, 1), 1 / math.sqrt(d))
        p["head.b"] = torch.full((1,), float(c.output_offset), dtype=F32)
        return p

    def item_side_shared(
        self, params: dict[str, torch.Tensor], base: dict[str, torch.Tensor]
    ) -> bool:
        """True when no item-side parameter of ``params`` (adapted) has a per-task copy,
        comparing with the shared ``base`` params: then the item side of a forward pass
        is the same for every task, and :meth:`apply` may take item inputs (1, N, ...) for
        T tasks, computing the items' representation and their part of the first layer
        once instead of T times (the neural process adapts only ``user_vec``)."""
        return all(
            params[k].dim() == base[k].dim() for k in _ITEM_SIDE if k in params and k in base
        )

    # --- inputs ------------------------------------------------------------------------
    def user_inputs(
        self,
        feats: FeatureSet,
        user_idx: torch.Tensor,  # (T,) int64
        support_items: torch.Tensor,  # (T, K) int64
        support_y: torch.Tensor,  # (T, K) float
        support_mask: torch.Tensor,  # (T, K) float
    ) -> torch.Tensor:
        """(T, d_user_in): user side features and the rating-weighted history profile."""
        parts = []
        if self.cfg.d_user_side:
            parts.append(feats.user_side[user_idx])
        if self.cfg.use_profile:
            parts.append(history_profile(feats.item_text, support_items, support_y, support_mask))
        if not parts:
            return feats.item_text.new_zeros(len(user_idx), 0)
        return torch.cat(parts, -1)

    def item_inputs(self, feats: FeatureSet, items: torch.Tensor) -> torch.Tensor:
        """(..., d_item_in): text and side features of ``items`` (...) int64."""
        if self.cfg.d_item_side:
            return torch.cat([feats.item_text[items], feats.item_side[items]], -1)
        return feats.item_text[items]

    def item_rows(
        self, items: torch.Tensor, known_items: torch.Tensor | np.ndarray | None
    ) -> torch.Tensor:
        """Rows of the ID tables: the item's own row if it was seen in training, else the
        unknown row n_items (zero embedding, zero bias)."""
        if not self.cfg.has_ids:
            return torch.zeros_like(items)
        if known_items is None:
            return items
        known = torch.as_tensor(known_items, dtype=torch.bool, device=items.device)
        return torch.where(known[items], items, torch.full_like(items, self.cfg.n_items))

    # --- forward -----------------------------------------------------------------------
    def user_repr(self, params: dict[str, torch.Tensor], user_x: torch.Tensor) -> torch.Tensor:
        """(T, 1, d_user_rep) from user inputs (T, d_user_in)."""
        c = self.cfg
        x = user_x.unsqueeze(1)  # (T, 1, d_user_in)
        if c.embed_dim:
            if c.d_user_in:
                u = row_times(x, params["user_proj.w"]) + _vec(params["user_proj.b"], 1)
            else:
                u = torch.zeros(x.shape[0], 1, c.embed_dim, dtype=x.dtype, device=x.device)
        else:
            u = x
        if c.user_vector:
            u = u + _vec(params["user_vec"], 1)
        return u

    def item_repr(
        self, params: dict[str, torch.Tensor], item_x: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """(T, N, d_item_rep) from item inputs (T, N, d_item_in) and ID rows (T, N)."""
        c = self.cfg
        i = affine(item_x, params["item_proj.w"], params["item_proj.b"]) if c.embed_dim else item_x
        if c.n_items and c.use_item_id:
            known = (rows < c.n_items).unsqueeze(-1).to(i.dtype)  # cold rows contribute zero
            i = i + _rows(params["item_id"], rows, 2) * known
        return i

    def apply(
        self,
        params: dict[str, torch.Tensor],
        user_x: torch.Tensor,  # (T, d_user_in)
        item_x: torch.Tensor,  # (T, N, d_item_in)
        rows: torch.Tensor,  # (T, N) ID-table rows (see item_rows)
    ) -> torch.Tensor:
        """Scores (T, N): logits for the binary head, ratings for the rating head.

        ``item_x`` (1, N, ...) and ``rows`` (1, N) are broadcast over the T tasks; valid
        only when :meth:`item_side_shared` holds for ``params``."""
        h = self.hidden(params, user_x, item_x, rows)  # (T, N, H)
        out = linear_head(h, params["head.w"], params["head.b"])  # (T, N)
        if self.cfg.n_items and self.cfg.use_item_bias:
            out = out + self.bias_term(params, rows)
        return out

    def hidden(
        self,
        params: dict[str, torch.Tensor],
        user_x: torch.Tensor,
        item_x: torch.Tensor,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """(T, N, H): the last hidden layer, the input of the linear head (φ if no MLP)."""
        c = self.cfg
        u = self.user_repr(params, user_x)  # (T, 1, du)
        i = self.item_repr(params, item_x, rows)  # (T, N, di)
        h = self._first_layer(params, u, i)  # (T, N, h1) or φ itself when there is no MLP
        for li in range(1, len(c.hidden)):
            h = affine(torch.relu(h), params[f"mlp.{li}.w"], params[f"mlp.{li}.b"])
        return torch.relu(h) if c.hidden else h

    def bias_term(self, params: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """(T, N) item-bias part of the output (0 for cold items or without ID params)."""
        c = self.cfg
        if not (c.n_items and c.use_item_bias):
            return torch.zeros(rows.shape, device=rows.device, dtype=F32)
        known = (rows < c.n_items).to(params["item_bias"].dtype)
        return _rows(params["item_bias"], rows, 1) * known

    def _first_layer(
        self, params: dict[str, torch.Tensor], u: torch.Tensor, i: torch.Tensor
    ) -> torch.Tensor:
        """First layer of the MLP on φ = [u; i; u ⊙ i] without materialising the broadcast
        concatenation: W is split by rows, so u (shared by a task's N items) is multiplied
        once per task, not N times. This matters when scoring the whole catalogue."""
        c = self.cfg
        n = i.shape[1]
        if not c.hidden:
            i = i.expand(u.shape[0], -1, -1)  # item inputs may be shared: (1, N, di)
            parts = [u.expand(-1, n, -1), i] + ([u * i] if c.interaction else [])
            return torch.cat(parts, -1)
        w, b = params["mlp.0.w"], params["mlp.0.b"]
        if n < 64 and w.requires_grad and torch.is_grad_enabled():
            # inner-loop sized batches under autograd: one GEMM on the concatenation is
            # cheaper than the split below, whose weight slices each cost a full-size
            # zero-filled gradient in backward
            i = i.expand(u.shape[0], -1, -1)
            parts = [u.expand(-1, n, -1), i] + ([u * i] if c.interaction else [])
            return affine(torch.cat(parts, -1), w, b)
        du, di = c.d_user_rep, c.d_item_rep
        wu, wi = w[..., :du, :], w[..., du : du + di, :]
        out = affine(i, wi, b) + row_times(u, wu)  # (T, N, h) + (T, 1, h)
        if c.interaction:
            out = out + _matmul(u * i, w[..., du + di :, :])
        return out

    def mlp_input(
        self,
        params: dict[str, torch.Tensor],
        user_x: torch.Tensor,
        item_x: torch.Tensor,
        rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(u (T, 1, du), i (T, N, di), φ = [u; i; u ⊙ i] (T, N, d_phi)) materialised, for the
        closed-form inner loop (which needs φ itself to form weight gradients φᵀ δ)."""
        u = self.user_repr(params, user_x)
        i = self.item_repr(params, item_x, rows)
        parts = [u.expand(-1, i.shape[1], -1), i] + ([u * i] if self.cfg.interaction else [])
        return u, i, torch.cat(parts, -1)

    # --- losses ------------------------------------------------------------------------
    def task_losses(self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean loss per task (T,): BCE-with-logits (binary) or squared error (rating).
        A task with no valid rows has loss 0 (padding, never NaN).

        With ``loss = "softmax"`` (binary head) a task's loss is the mean over its positive
        rows p of −log(e^{s_p} / (e^{s_p} + Σ_n e^{s_n})), n over the task's negative rows
        (disliked and sampled): a ranking loss whose gradient goes mostly to the negatives
        that score highest, as LightFM's WARP does by search. BCE judges each row alone."""
        if self.cfg.loss in ("softmax", "bce+softmax"):
            neg = (mask > 0) & (y < 0.5)  # (T, N)
            pos = mask * (y >= 0.5)
            # a finite floor, not -inf: a task without negatives then gives softplus(-1e9)
            # = 0 with zero gradient instead of NaN
            lse = torch.logsumexp(out.masked_fill(~neg, -1e9), dim=-1, keepdim=True)  # (T, 1)
            per = F.softplus(lse - out)  # (T, N), used on positive rows only
            rank = (per * pos).sum(-1) / pos.sum(-1).clamp_min(1.0)
            if self.cfg.loss == "softmax":
                return rank
            bce = F.binary_cross_entropy_with_logits(out, y, reduction="none")
            return rank + (bce * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        if self.cfg.head == "binary":
            per = F.binary_cross_entropy_with_logits(out, y, reduction="none")
        else:
            per = (out - y) ** 2
        return (per * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)

    def row_weights(self, mask: torch.Tensor) -> torch.Tensor:
        """(T, N) weight of each row in its task's masked mean loss: mask / row count."""
        return mask / mask.sum(-1, keepdim=True).clamp_min(1.0)

    def row_loss_grad(
        self, out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """(T, N) d task_losses[t] / d out[t, n] in closed form: σ(out) − y (BCE with logits)
        or 2 (out − y) (squared error), times the row weights (see :meth:`row_weights`)."""
        if self.cfg.loss != "bce" and self.cfg.head == "binary":
            # the softmax loss couples a task's rows; only autograd paths handle it
            raise MetarecError(
                f"the {self.cfg.loss!r} loss has no closed-form row gradient: use it with the "
                "neural-process algorithm (rank_meta.algorithm = 'np')"
            )
        if self.cfg.head == "binary":
            return (torch.sigmoid(out) - y) * weights
        return (out - y) * (2.0 * weights)


# parameters that act on items alone (a per-task copy of any of them makes the item side
# of the forward pass differ between tasks)
_ITEM_SIDE = ("item_proj.w", "item_proj.b", "item_id", "item_bias", "mlp.0.w", "mlp.0.b")


def _matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.bmm(x, w) if w.dim() == 3 else x @ w
