"""Several independently trained meta-models scored as one (``model.rank_members``).

Member j's parameters live in one flat dict under the prefix ``"m{j}."``, so an ensemble
is still "parameters as data": it is saved, moved to a device and fine-tuned like a single
model. Every member has the same scorer and meta-algorithm (only the values differ: each
was trained from its own seed), so one set of task inputs serves them all; the
ensemble's output is the mean of the members' outputs (logits for the ranking model).

Why: on ML-100K item cold-start, single ranking models trained from different seeds
differ by up to 0.02 nDCG@10 over the same validation items (0.04 over the backtest's
far items), and the mean of three separately fitted models scored better than their
average member (docs/defaults.md; ``ModelConfig.rank_members``
and ``cold_rank_members`` hold the figures of this in-model form).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metarec.meta.algorithms import MetaLearner
from metarec.meta.episodes import TaskInputs
from metarec.meta.inner import Params
from metarec.types import MetarecError


def member_prefix(j: int) -> str:
    return f"m{j}."


def member_params(params: Params, j: int) -> Params:
    """Member j's entries of a flat ensemble dict, unprefixed ({} if it has none)."""
    pre = member_prefix(j)
    return {k[len(pre) :]: v for k, v in params.items() if k.startswith(pre)}


def merge_members(parts: list[Params]) -> Params:
    """One flat dict from per-member parameter dicts (member j under ``m{j}.``)."""
    return {f"{member_prefix(j)}{k}": v for j, p in enumerate(parts) for k, v in p.items()}


@dataclass(frozen=True)
class EnsembleLearner(MetaLearner):
    """A :class:`MetaLearner` over ``members`` copies of one scorer; see the module doc.

    Losses are those of the mean output (what is served); :meth:`meta_grads` trains each
    member on its own loss, as if alone (members never see each other's outputs)."""

    members: int = 2

    def __post_init__(self) -> None:
        if self.members < 2:
            raise MetarecError(f"EnsembleLearner needs 2 or more members, got {self.members}")

    @property
    def single(self) -> MetaLearner:
        """One member's learner (same scorer and meta-algorithm)."""
        return MetaLearner(self.scorer, self.cfg)

    def member(self, params: Params, j: int) -> Params:
        """Member j's parameters, unprefixed."""
        out = member_params(params, j)
        if not out:
            raise MetarecError(f"ensemble parameters hold no member {j} ({member_prefix(j)}*)")
        return out

    def split(self, params: Params) -> list[Params]:
        return [self.member(params, j) for j in range(self.members)]

    # --- meta-parameters -------------------------------------------------------------
    def init_params(self, generator: torch.Generator | None = None) -> Params:
        return merge_members([self.single.init_params(generator) for _ in range(self.members)])

    def adapt_keys(self, params: Params) -> tuple[str, ...]:
        one = self.single
        return tuple(
            f"{member_prefix(j)}{k}"
            for j, p in enumerate(self.split(params))
            for k in one.adapt_keys(p)
        )

    # --- forward -----------------------------------------------------------------------
    def predict(
        self, params: Params, user_x: torch.Tensor, item_x: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """(T, N): the mean of the members' outputs."""
        one = self.single
        outs = [one.predict(p, user_x, item_x, rows) for p in self.split(params)]
        return torch.stack(outs).mean(0)

    def support_losses(self, params: Params, x: TaskInputs) -> torch.Tensor:
        out = self.predict(params, x.user_x, x.s_x, x.s_rows)
        return self.scorer.task_losses(out, x.s_y, x.s_mask)

    def query_losses(self, params: Params, x: TaskInputs) -> torch.Tensor:
        out = self.predict(params, x.user_x, x.q_x, x.q_rows)
        return self.scorer.task_losses(out, x.q_y, x.q_mask)

    def item_side_shared(self, params: Params, base: Params) -> bool:
        return all(
            self.scorer.item_side_shared(p, b)
            for p, b in zip(self.split(params), self.split(base), strict=True)
        )

    # --- adaptation --------------------------------------------------------------------
    def adapt(self, params: Params, x: TaskInputs, *, keep_graph: bool = False) -> Params:
        # each member is adapted (and backed off, MetaLearner._backtrack) against its own
        # support loss; the members' mean can still fit the support worse than before
        one = self.single
        return merge_members([one.adapt(p, x, keep_graph=keep_graph) for p in self.split(params)])

    def meta_grads(self, params: Params, x: TaskInputs) -> tuple[torch.Tensor, Params]:
        """(mean of the members' meta-losses, every member's own meta-gradient)."""
        one = self.single
        losses, grads = zip(*(one.meta_grads(p, x) for p in self.split(params)), strict=True)
        return torch.stack(list(losses)).mean(), merge_members(list(grads))

    def loop_meta_grads(self, params: Params, x: TaskInputs) -> tuple[torch.Tensor, Params]:
        one = self.single
        losses, grads = zip(*(one.loop_meta_grads(p, x) for p in self.split(params)), strict=True)
        return torch.stack(list(losses)).mean(), merge_members(list(grads))
