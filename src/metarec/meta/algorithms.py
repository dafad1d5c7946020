"""Meta-learning algorithms as settings of one learner.

Each algorithm is an :class:`Algorithm` record (how the inner loop adapts, how the outer
gradient is formed); :class:`MetaLearner` turns a (ScorerConfig, MetaConfig) pair into pure
functions over a *meta-parameter* dict: the scorer's parameters plus the algorithm's own
(Meta-SGD's log step sizes, ridge's log λ, the neural-process aggregator).

  maml      second-order MAML (Finn et al. 2017): ∂L_query(φ(θ))/∂θ through the inner loop
  fomaml    first-order MAML: the same with inner gradients held constant (no Hessian terms)
  reptile   Reptile (Nichol et al. 2018): adapt on the whole task, meta-gradient θ − φ
  meta_sgd  Meta-SGD (Li et al. 2017): per-parameter step sizes α = exp(log_lr), learned
  melu      MeLU (Lee et al. 2019): local update of the decision layers only; embeddings and
            projections move only in the outer loop
  ridge     R2-D2 / MetaOptNet-style: the head is fitted in closed form to the support by
            ridge regression (prior centred on the meta-learned head, learned λ), so the
            outer loop learns representations for which that exact fold-in works
  np        neural-process style: the support is encoded and mean-pooled into a shift of the
            user vector; no gradient steps at adaptation time

All ``adapt`` results are per-task parameter dicts (adapted keys carry a leading T).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from metarec.config import coerce_fields
from metarec.meta.episodes import TaskInputs
from metarec.meta.inner import (
    Factored,
    Params,
    closed_form_first_order_meta_grads,
    closed_form_inner_loop,
    closed_form_supported,
    densify,
    inner_loop,
    loop_meta_grads,
    scorer_forward,
)
from metarec.models.scorer import _GROUP_OF_PREFIX, F32, GROUPS, Scorer, affine, param_group
from metarec.types import MetarecError


@dataclass(frozen=True)
class Algorithm:
    name: str
    inner: Literal["sgd", "ridge", "np"]
    outer: Literal["query", "reptile"]
    first_order: bool
    learn_step_sizes: bool
    adapt_groups: tuple[str, ...]  # default groups adapted by the inner loop


_ALL = ("projection", "user", "decision")
ALGORITHMS: dict[str, Algorithm] = {
    "maml": Algorithm("maml", "sgd", "query", False, False, _ALL),
    "fomaml": Algorithm("fomaml", "sgd", "query", True, False, _ALL),
    "reptile": Algorithm("reptile", "sgd", "reptile", True, False, _ALL),
    "meta_sgd": Algorithm("meta_sgd", "sgd", "query", False, True, _ALL),
    "melu": Algorithm("melu", "sgd", "query", False, False, ("decision",)),
    "ridge": Algorithm("ridge", "ridge", "query", False, False, ()),
    "np": Algorithm("np", "np", "query", False, False, ()),
}


MAX_NP_HIDDEN = 65_536  # as model.MAX_WIDTH for the scorer's layers
MAX_INNER_STEPS = 1_000  # adaptation steps per task (the defaults take 5)
MAX_INNER_LR = 1e6  # far above any step size that adapts; below float32's range
# the closed-form head's bounds: λ = 1e39 overflowed float32 and stopped training with a
# "meta-loss is nan" that never named the key; a target of 1e20 gave scores of -5.8e19.
# Logits of ±100 already saturate the sigmoid in float32
MAX_RIDGE_LAMBDA = 1e6
# and the floor the head's solve uses (a smaller λ, configured or learned, is held at it):
# below it the float32 normal equations (whose λ-only directions have eigenvalue λ when a
# support holds fewer rows than the head has weights) lost precision (meta-gradient 3% off
# at 1e-4, the head's loss 20x too high at 1e-6) and at 1e-9 were singular: fit crashed,
# or wrote a RUN that no longer loaded. Held, not refused: a RUN saved with a smaller
# configured λ still loads
MIN_RIDGE_LAMBDA = 1e-4
MAX_RIDGE_TARGET = 100.0
# how many times a gradient adaptation that raised its task's support loss is retried at
# half the step sizes (1/2, 1/4, ...) before the task keeps the meta-learned parameters
# unadapted (MetaLearner.adapt without a graph: serving, evaluation, the blend's fit, and
# the validation loss that early stopping reads; the meta-gradient of training keeps the
# plain loop, so a step size that overshoots shows in the training loss, not there)
ADAPT_BACKTRACKS = 4


@dataclass(frozen=True)
class MetaConfig:
    algorithm: str = "maml"
    inner_steps: int = 5
    inner_lr: float = 0.05  # SGD step size (Meta-SGD: the initial value of every α)
    adapt_groups: tuple[str, ...] | None = None  # None: the algorithm's default groups
    first_order: bool | None = None  # None: the algorithm's default
    ridge_lambda: float = 1.0  # initial λ of the closed-form head (learned in log space)
    ridge_target: float = 3.0  # binary head: ridge regresses logits onto ±ridge_target
    np_hidden: int = 64  # width of the neural-process support encoder

    def __post_init__(self) -> None:
        coerce_fields(self)  # built directly too, as from_dict builds it
        if self.algorithm not in ALGORITHMS:
            raise MetarecError(
                f"unknown meta algorithm {self.algorithm!r} (known: {', '.join(ALGORITHMS)})"
            )
        # each named with its value: the one message listing all three rules did not say
        # which key of `--set meta.inner_steps=-1` had failed
        for key, ok, rule in (
            ("inner_steps", self.inner_steps >= 0, ">= 0"),
            ("inner_lr", self.inner_lr > 0, "> 0"),
            ("ridge_lambda", self.ridge_lambda > 0, "> 0"),
        ):
            if not ok:
                raise MetarecError(f"MetaConfig.{key} must be {rule}, got {getattr(self, key)}")
        if self.inner_steps > MAX_INNER_STEPS or self.inner_lr > MAX_INNER_LR:
            # 1e39 overflowed float32 deep inside torch; 1e8 steps ran for days
            raise MetarecError(
                f"MetaConfig: inner_steps <= {MAX_INNER_STEPS} and inner_lr <= {MAX_INNER_LR:g}, "
                f"got {self.inner_steps} and {self.inner_lr:g}"
            )
        if not 0 < self.ridge_target <= MAX_RIDGE_TARGET:
            raise MetarecError(
                f"MetaConfig.ridge_target must be in (0, {MAX_RIDGE_TARGET:g}], "
                f"got {self.ridge_target:g}"
            )
        if self.ridge_lambda > MAX_RIDGE_LAMBDA:
            raise MetarecError(
                f"MetaConfig.ridge_lambda must be <= {MAX_RIDGE_LAMBDA:g}, got {self.ridge_lambda:g}"
            )
        if not 1 <= self.np_hidden <= MAX_NP_HIDDEN:
            # 0 divided by zero in the encoder's init; 1e8 asked for tens of GB
            raise MetarecError(
                f"MetaConfig.np_hidden must be in [1, {MAX_NP_HIDDEN}], got {self.np_hidden}"
            )
        for g in self.adapt_groups or ():
            if g not in GROUPS:
                raise MetarecError(f"MetaConfig.adapt_groups: unknown group {g!r} ({GROUPS})")

    @classmethod
    def from_dict(cls, data: dict) -> MetaConfig:
        from metarec.config import from_dict

        return from_dict(cls, data, "meta")


def is_scorer_param(name: str) -> bool:
    return name.split(".", 1)[0] in _GROUP_OF_PREFIX


@dataclass(frozen=True)
class MetaLearner:
    scorer: Scorer
    cfg: MetaConfig

    @property
    def algorithm(self) -> Algorithm:
        return ALGORITHMS[self.cfg.algorithm]

    @property
    def first_order(self) -> bool:
        fo = self.cfg.first_order
        return self.algorithm.first_order if fo is None else fo

    @property
    def adapt_groups(self) -> tuple[str, ...]:
        g = self.cfg.adapt_groups
        return self.algorithm.adapt_groups if g is None else g

    # --- meta-parameters -----------------------------------------------------------------
    def init_params(self, generator: torch.Generator | None = None) -> Params:
        """Scorer parameters plus the algorithm's own meta-parameters."""
        p = self.scorer.init_params(generator)
        a, c, sc = self.algorithm, self.cfg, self.scorer.cfg
        if a.learn_step_sizes:
            for k in self.adapt_keys(p):
                p[f"log_lr.{k}"] = torch.full_like(p[k], math.log(c.inner_lr))
        if a.inner == "ridge":
            if c.ridge_lambda < MIN_RIDGE_LAMBDA:
                warnings.warn(
                    f"meta.ridge_lambda {c.ridge_lambda:g} is below {MIN_RIDGE_LAMBDA:g}, the "
                    "smallest λ the closed-form head solves with: it is held there",
                    stacklevel=2,
                )
            p["ridge.log_lambda"] = torch.full((1,), math.log(c.ridge_lambda), dtype=F32)
        if a.inner == "np":
            if not sc.user_vector:
                raise MetarecError("the 'np' algorithm needs ScorerConfig.user_vector = true")
            d_in, h = sc.d_item_rep + 1, c.np_hidden
            p["np.enc.w"] = torch.randn(d_in, h, generator=generator, dtype=F32) * math.sqrt(
                2.0 / d_in
            )
            p["np.enc.b"] = torch.zeros(h, dtype=F32)
            p["np.out.w"] = torch.randn(h, sc.d_user_rep, generator=generator, dtype=F32) * (
                0.1 / math.sqrt(h)
            )
            p["np.out.b"] = torch.zeros(sc.d_user_rep, dtype=F32)
        return p

    def adapt_keys(self, params: Params) -> tuple[str, ...]:
        """Scorer parameters adapted by the gradient inner loop, in ``params`` order."""
        if self.algorithm.inner != "sgd":
            return ()
        groups = set(self.adapt_groups)
        return tuple(k for k in params if is_scorer_param(k) and param_group(k) in groups)

    def step_sizes(self, params: Params) -> dict[str, torch.Tensor | float]:
        keys = self.adapt_keys(params)
        if self.algorithm.learn_step_sizes:
            return {k: params[f"log_lr.{k}"].exp() for k in keys}
        return {k: self.cfg.inner_lr for k in keys}

    # --- forward -------------------------------------------------------------------------
    def predict(
        self, params: Params, user_x: torch.Tensor, item_x: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """(T, N) scores with (base or adapted) params."""
        return self.scorer.apply(params, user_x, item_x, rows)

    def item_side_shared(self, params: Params, base: Params) -> bool:
        """:meth:`Scorer.item_side_shared` for ``params`` adapted from ``base``."""
        return self.scorer.item_side_shared(params, base)

    def support_losses(self, params: Params, x: TaskInputs) -> torch.Tensor:
        out = self.scorer.apply(params, x.user_x, x.s_x, x.s_rows)
        return self.scorer.task_losses(out, x.s_y, x.s_mask)

    def query_losses(self, params: Params, x: TaskInputs) -> torch.Tensor:
        out = self.scorer.apply(params, x.user_x, x.q_x, x.q_rows)
        return self.scorer.task_losses(out, x.q_y, x.q_mask)

    # --- adaptation ----------------------------------------------------------------------
    def adapt(self, params: Params, x: TaskInputs, *, keep_graph: bool = False) -> Params:
        """Per-task params adapted to each task's support (only the support fields of ``x``
        are read). Pure: ``params`` is never modified. With ``keep_graph`` (training) the
        result stays differentiable w.r.t. ``params``; otherwise it is detached."""
        if not keep_graph:
            params = {k: v.detach() for k, v in params.items()}
        inner = self.algorithm.inner
        if inner == "sgd":
            out, factored = self._sgd(params, x)
            out = densify(out, factored, x.n_tasks)
            if not keep_graph and self.cfg.inner_steps > 0:
                out = self._backtrack(params, out, x)
        elif inner == "ridge":
            out = self._ridge(params, x)
        else:
            out = self._np(params, x)
        return out if keep_graph else {k: v.detach() for k, v in out.items()}

    def _backtrack(self, params: Params, out: Params, x: TaskInputs) -> Params:
        """``out`` (adapted per task) with every task whose support loss the steps raised
        above the unadapted one's (or made NaN / inf) adapted again at half the step
        sizes, up to ADAPT_BACKTRACKS times, then left unadapted. Why: a fixed step that
        suits the training tasks can overshoot on an unusual one (an item whose numeric
        side value sits at the ±5 sd cap made a one-rating support's prediction swing
        2.7 -> -3.8 -> 19.5 -> -1.6e5 -> inf -> NaN over the five steps), and one NaN
        user failed a whole predict batch. A task the steps improve is untouched. Seed 0,
        validation and test tasks: no task of a meta-trained rating model was raised
        (ML-100K user cold 283 tasks, largest adapted / unadapted support loss 0.81;
        item cold 1,249, 0.92); the pooled model's fine-tuning (Pooled+FT, never trained
        to adapt) raised 4 of 283 and 264 of 1,249 (up to 4.6 times)."""
        with torch.no_grad():
            base = self.support_losses(params, x)  # (T,)
            bad = ~(self.support_losses(out, x) <= base)  # NaN compares False: bad too
        if not bad.any():
            return out
        keys = self.adapt_keys(params)
        fixed = {  # (T, *S) per adapted key, writable
            k: torch.broadcast_to(out[k], (x.n_tasks, *params[k].shape)).clone() for k in keys
        }
        pending = bad.nonzero().squeeze(1)  # (P,) task indices still to fix
        scale = 1.0
        for _ in range(ADAPT_BACKTRACKS):
            scale /= 2
            sub = x.select(pending)
            again, factored = self._sgd(params, sub, scale)
            again = densify(again, factored, sub.n_tasks)
            with torch.no_grad():
                ok = self.support_losses(again, sub) <= base[pending]
            for k in keys:
                fixed[k][pending[ok]] = again[k][ok].detach()
            pending = pending[~ok]
            if not len(pending):
                break
        for k in keys:  # still raised at 1/16 of the step: no adaptation
            fixed[k][pending] = params[k].detach()
        return {**out, **fixed}

    def _sgd(
        self, params: Params, x: TaskInputs, scale: float = 1.0
    ) -> tuple[Params, dict[str, Factored]]:
        """The gradient inner loop: closed-form gradients where they cover the settings (the
        production path), else autograd (``inner_loop``, also the closed form's oracle).
        ``scale`` multiplies every step size (:meth:`_backtrack`)."""
        keys = self.adapt_keys(params)
        sizes = self.step_sizes(params)
        if scale != 1.0:
            sizes = {k: v * scale for k, v in sizes.items()}
        if closed_form_supported(self.scorer, keys):
            return closed_form_inner_loop(
                self.scorer,
                params,
                x.user_x,
                x.s_x,
                x.s_rows,
                x.s_y,
                x.s_mask,
                keys,
                self.cfg.inner_steps,
                sizes,
                self.first_order,
            )
        out = inner_loop(
            lambda p: self.support_losses(p, x),
            params,
            keys,
            x.n_tasks,
            self.cfg.inner_steps,
            sizes,
            self.first_order,
        )
        return out, {}

    def _ridge(self, params: Params, x: TaskInputs) -> Params:
        """Head (w, b) per task = argmin Σ_j m_j (h_j·w + b − t_j)² + λ‖(w, b) − (w₀, b₀)‖²,
        solved exactly, differentiable in H, λ, w₀. With v = [w; b] − [w₀; b₀], r = t − H[w₀; b₀]
        and G = √M H: primal (GᵀG + λI) v = Gᵀ√M r, (H+1)×(H+1); dual v = Gᵀ(GGᵀ + λI)⁻¹√M r,
        K×K (the push-through identity, as R2-D2 solves it). The smaller system is solved, in
        float64: when K < H+1 the primal's matrix has H+1−K eigenvalues of exactly λ, the
        dual's none, and float32 lost the meta-gradient's precision as λ shrank."""
        sc = self.scorer
        h = sc.hidden(params, x.user_x, x.s_x, x.s_rows)  # (T, K, H)
        ones = torch.ones(*h.shape[:2], 1, dtype=h.dtype, device=h.device)
        ha = torch.cat([h, ones], -1)  # (T, K, H+1): bias as a constant feature
        y = x.s_y
        if sc.cfg.head == "binary":
            y = self.cfg.ridge_target * (2.0 * y - 1.0)
        t = y - sc.bias_term(params, x.s_rows)  # (T, K): what the head must produce
        w0 = torch.cat([params["head.w"], params["head.b"].reshape(1, 1)], 0)  # (H+1, 1)
        raw = params["ridge.log_lambda"].exp()
        # held at the floor in value, with the gradient of the unclamped λ (straight
        # through): a clamp passed none below the floor, so a λ that drifted under it (or
        # started at it: exp(log(1e-4)) is below 1e-4 in float32) could never come back
        lam = (raw + (raw.clamp_min(MIN_RIDGE_LAMBDA) - raw).detach()).double()
        root = x.s_mask.clamp_min(0).sqrt().unsqueeze(-1).double()  # (T, K, 1)
        g = ha.double() * root  # (T, K, H+1): padded rows are 0
        r = root * (t.unsqueeze(-1).double() - ha.double() @ w0.double())  # (T, K, 1)
        k, n = g.shape[1], g.shape[2]
        if k < n:
            eye = torch.eye(k, dtype=g.dtype, device=g.device)
            alpha = torch.linalg.solve(g @ g.transpose(1, 2) + lam * eye, r)  # (T, K, 1)
            v = g.transpose(1, 2) @ alpha  # (T, H+1, 1)
        else:
            eye = torch.eye(n, dtype=g.dtype, device=g.device)
            v = torch.linalg.solve(g.transpose(1, 2) @ g + lam * eye, g.transpose(1, 2) @ r)
        w = (w0.double() + v).to(h.dtype)  # (T, H+1, 1)
        return {**params, "head.w": w[:, :-1, :], "head.b": w[:, -1, :]}

    def _np(self, params: Params, x: TaskInputs) -> Params:
        """user_vec per task = user_vec + out(mean_j m_j relu(enc([i_j; y_j])))."""
        i = self.scorer.item_repr(params, x.s_x, x.s_rows)  # (T, K, di)
        e = torch.relu(
            affine(torch.cat([i, x.s_y.unsqueeze(-1)], -1), params["np.enc.w"], params["np.enc.b"])
        )  # (T, K, H)
        m = x.s_mask.unsqueeze(-1)
        r = (e * m).sum(1) / m.sum(1).clamp_min(1.0)  # (T, H)
        delta = r @ params["np.out.w"] + params["np.out.b"]  # (T, du)
        return {**params, "user_vec": params["user_vec"] + delta}

    # --- outer loop ----------------------------------------------------------------------
    def meta_grads(self, params: Params, x: TaskInputs) -> tuple[torch.Tensor, Params]:
        """(mean post-adaptation loss, gradient dict for every meta-parameter).

        Query-based algorithms: d/dθ mean_t L_query_t(adapt(θ)); the neural process scores
        support and query rows (the CNP objective). Reptile: on the adapted keys
        θ − mean_t φ_t (φ adapted on support ∪ query); the other, shared keys get the
        first-order gradient of that task loss at φ, as they have no θ − φ of their own.
        """
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        if self.algorithm.outer == "reptile":
            xm = x.merged()
            fast = self.adapt(leaves, xm, keep_graph=True)
            loss = self.support_losses(fast, xm).mean()
            keys = list(leaves)
            gs = torch.autograd.grad(loss, [leaves[k] for k in keys], allow_unused=True)
            grads = {k: _or_zeros(g, leaves[k]) for k, g in zip(keys, gs, strict=True)}
            for k in self.adapt_keys(leaves):
                grads[k] = (leaves[k] - fast[k]).detach().mean(0)
            return loss.detach(), grads
        if self.algorithm.inner == "sgd":
            keys = self.adapt_keys(leaves)
            if (
                self.first_order
                and not self.algorithm.learn_step_sizes
                and set(keys) == set(leaves)
                and closed_form_supported(self.scorer, keys)
            ):
                # every meta-parameter adapts: the first-order meta-gradient in closed form
                return closed_form_first_order_meta_grads(
                    self.scorer, leaves, x, self.cfg.inner_steps, self.cfg.inner_lr
                )
            # query loss straight from the factored weights: no per-task weight tensors formed
            fast, factored = self._sgd(leaves, x)
            out = scorer_forward(self.scorer, fast, factored, x.user_x, x.q_x, x.q_rows)
            loss = self.scorer.task_losses(out, x.q_y, x.q_mask).mean()
            keys = list(leaves)
            gs = torch.autograd.grad(loss, [leaves[k] for k in keys], allow_unused=True)
            grads = {k: _or_zeros(g, leaves[k]) for k, g in zip(keys, gs, strict=True)}
            return loss.detach(), grads
        fast = self.adapt(leaves, x, keep_graph=True)
        if self.algorithm.inner == "np":
            # conditional-NP objective: predict context (support) and target (query) rows
            loss = self.support_losses(fast, x.merged()).mean()
        else:
            loss = self.query_losses(fast, x).mean()
        keys = list(leaves)
        gs = torch.autograd.grad(loss, [leaves[k] for k in keys], allow_unused=True)
        return loss.detach(), {k: _or_zeros(g, leaves[k]) for k, g in zip(keys, gs, strict=True)}

    def loop_meta_grads(self, params: Params, x: TaskInputs) -> tuple[torch.Tensor, Params]:
        """Per-task reference of :meth:`meta_grads` for the gradient algorithms (query outer
        loop): the test oracle and the benchmark's baseline."""
        if self.algorithm.inner != "sgd" or self.algorithm.outer != "query":
            raise MetarecError(f"no per-task reference loop for {self.cfg.algorithm!r}")
        sc = self.scorer

        def one(p: Params, t: int, query: bool) -> torch.Tensor:
            xt = x.select(slice(t, t + 1))
            if query:
                out = sc.apply(p, xt.user_x, xt.q_x, xt.q_rows)
                return sc.task_losses(out, xt.q_y, xt.q_mask).sum()
            out = sc.apply(p, xt.user_x, xt.s_x, xt.s_rows)
            return sc.task_losses(out, xt.s_y, xt.s_mask).sum()

        return loop_meta_grads(
            lambda p, t: one(p, t, False),
            lambda p, t: one(p, t, True),
            params,
            self.adapt_keys(params),
            x.n_tasks,
            self.cfg.inner_steps,
            self.step_sizes if self.algorithm.learn_step_sizes else self.step_sizes(params),
            self.first_order,
        )


def _or_zeros(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g
