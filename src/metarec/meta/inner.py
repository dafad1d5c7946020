"""The gradient inner loop, batched over the tasks of a meta-batch: two implementations.

Every adapted parameter gets a leading task dimension: θ (shape S) becomes φ (T, *S), starting
as a broadcast view of θ. Because task t's support loss depends only on φ[t], the gradient
of Σ_t L_t w.r.t. the stacked φ is exactly the stack of per-task gradients, so one pass
adapts all T tasks with batched GEMMs.

* :func:`closed_form_inner_loop`: THE production path (``MetaLearner.adapt`` and
  ``meta_grads`` use it whenever it covers the settings: an MLP scorer, ID tables not
  adapted). The scorer's support-loss gradients are written out by hand, and MLP weights are
  kept factored (θ − aᵀb) where that is cheaper; see the section comment further down.
* :func:`inner_loop`: ``torch.autograd.grad`` per step on any support loss. It is the
  fallback (adapted ID tables, no hidden layer) and the oracle the closed form is tested
  against (tests/test_meta_closed_form.py: 1e-10 in float64).
* :func:`loop_meta_grads`: a plain per-task Python loop, the reference of both (tests) and
  the baseline of the throughput benchmark (``metarec.meta.bench``).

Settings that make the algorithms (see ``algorithms.py``):
  * which keys adapt (all decision/user/projection layers for MAML; decision only for MeLU)
  * step sizes: a float, or learned per-parameter tensors (Meta-SGD)
  * ``first_order``: the inner gradients are treated as constants (FOMAML / Reptile); φ keeps
    its identity path to θ (and to learned step sizes), only the Hessian terms are dropped.

Both loops are pure: they never write to ``params``.

Measured (benchmarks/bench_meta.py, 2 threads, machine shared with ~10 other processes):
the first version of this file (autograd per step) ran MAML 2nd order at 8-10x the per-task
loop, FOMAML at 7-10x; the closed form runs them at 11-20x and 17-22x.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from metarec.meta.episodes import TaskInputs
from metarec.models.scorer import Scorer, affine, linear_head, param_group, row_times
from metarec.types import MetarecError

Params = dict[str, torch.Tensor]
StepSizes = Mapping[str, torch.Tensor | float]


def inner_loop(
    support_loss: Callable[[Params], torch.Tensor],
    params: Mapping[str, torch.Tensor],
    adapt_keys: Sequence[str],
    n_tasks: int,
    steps: int,
    step_sizes: StepSizes,
    first_order: bool,
) -> Params:
    """Return ``{**params, k: φ_k}`` after ``steps`` SGD steps on ``support_loss``.

    support_loss(params) -> (T,) per-task losses; it must accept per-task (T, *S) tensors for
    the adapted keys. When no adapted parameter requires grad (serving, evaluation) φ is a
    fresh leaf and nothing reaches back to ``params``.
    """
    if steps and adapt_keys and torch.is_inference_mode_enabled():
        # enable_grad does not lift inference mode: autograd.grad failed with "element 0 of
        # tensors does not require grad" (the closed-form paths never needed autograd)
        raise MetarecError(
            "gradient adaptation needs autograd: call it outside torch.inference_mode() "
            "(torch.no_grad() is fine)"
        )
    track_higher = not first_order and any(params[k].requires_grad for k in adapt_keys)
    fast: Params = {}
    for k in adapt_keys:
        p = params[k].expand(n_tasks, *params[k].shape)  # (T, *S) view, no copy
        fast[k] = p if p.requires_grad else p.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        for _ in range(steps):
            losses = support_loss({**params, **fast})  # (T,)
            grads = torch.autograd.grad(
                losses.sum(), [fast[k] for k in adapt_keys], create_graph=track_higher
            )
            new: Params = {}
            for k, g in zip(adapt_keys, grads, strict=True):
                if not track_higher:
                    g = g.detach()
                lr = step_sizes[k]
                # a float step fuses into one op (fewer weight-sized temporaries per step)
                step = fast[k].add(g, alpha=-lr) if isinstance(lr, float) else fast[k] - lr * g
                # a fresh tensor when nothing upstream needs grad: make it the next leaf
                new[k] = step if step.requires_grad else step.detach().requires_grad_(True)
            fast = new
    return {**params, **fast}


def loop_meta_grads(
    support_loss_one: Callable[[Params, int], torch.Tensor],
    query_loss_one: Callable[[Params, int], torch.Tensor],
    params: Mapping[str, torch.Tensor],
    adapt_keys: Sequence[str],
    n_tasks: int,
    steps: int,
    step_sizes: StepSizes | Callable[[Params], StepSizes],
    first_order: bool,
) -> tuple[torch.Tensor, Params]:
    """Reference MAML/FOMAML meta-gradient: a plain Python loop over tasks, one unbatched
    model per task and ``torch.autograd.grad`` per step. Slow; the test oracle for
    :func:`inner_loop` and the baseline of the throughput benchmark.

    support_loss_one(params, t) / query_loss_one(params, t) -> scalar loss of task t with
    unbatched params. ``step_sizes`` may be a function of the params (Meta-SGD's learned
    sizes). Returns (mean query loss, d mean-query-loss / d params).
    """
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    total = {k: torch.zeros_like(v) for k, v in leaves.items()}
    loss_sum = 0.0
    for t in range(n_tasks):
        sizes = step_sizes(leaves) if callable(step_sizes) else step_sizes
        fast = {k: leaves[k] for k in adapt_keys}
        for _ in range(steps):
            loss = support_loss_one({**leaves, **fast}, t)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {
                k: fast[k] - sizes[k] * (g.detach() if first_order else g)
                for k, g in zip(adapt_keys, grads, strict=True)
            }
        q = query_loss_one({**leaves, **fast}, t) / n_tasks
        grads = torch.autograd.grad(q, list(leaves.values()), allow_unused=True)
        for k, g in zip(leaves, grads, strict=True):
            if g is not None:
                total[k] += g
        loss_sum += float(q.detach())
    return torch.tensor(loss_sum), total


# ---------------------------------------------------------------------------------------
# Closed-form inner loop: the production path for the scorer's MLP.
#
# The scorer is a ReLU MLP with a linear head, so the support-loss gradient of every adapted
# parameter is a few batched matmuls (δ_out = ∂L/∂out; δ_l = (δ_{l+1} W_{l+1}ᵀ) ⊙ 1[pre_l > 0];
# ∂L/∂W_l = h_{l-1}ᵀ δ_l). Writing them as ordinary tensor ops instead of calling
# torch.autograd.grad each step means:
#   * first order / serving: the inner loop runs under no_grad with no graph at all; the
#     outer gradient is ONE autograd call at φ = θ − α Σ_s g_s (the g_s held constant);
#   * second order: the inner gradients are plain differentiable ops, so the outer call
#     differentiates the unrolled loop once, without create_graph's double-backward nodes.
# Low rank: a step changes W_l by α h_{l-1}ᵀ δ_l, an outer product of rank ≤ K (support size).
# With a float step size, every MLP weight is kept as θ_l − a_tᵀ b_t (see Factored) and the
# per-task (T, in, out) weights are never formed: rows x get x θ_l (one GEMM shared by all
# tasks) minus (x a_tᵀ) b_t, tensors of K × (steps·K) and (steps·K) × out. The first layer's
# input z is fixed when only decision layers adapt; then a_t = z_t for good (rank K) and
# z θ0 and the Gram matrices z zᵀ are formed once per batch.
# ``inner_loop`` above stays the autograd oracle (tests/test_meta_closed_form.py).


@dataclass(frozen=True, eq=False)
class Factored:
    """Per-task adapted weights W_t = θ − a_tᵀ b_t without forming them.

    After s inner steps a_t stacks the layer's support inputs of every step (or just the
    fixed input z_t) and b_t the matching step-size-scaled errors α δ.
    """

    theta: torch.Tensor  # (in, out) shared θ
    a: torch.Tensor | None  # (T, r, in); None: no step taken yet (W_t = θ)
    b: torch.Tensor | None  # (T, r, out)
    shared: int = 0  # leading input columns equal on all rows of a task (the user block of z)

    def dense(self, n_tasks: int) -> torch.Tensor:
        """(T, in, out) per-task weights (serving forms them once per request)."""
        if self.a is None:
            return self.theta.expand(n_tasks, *self.theta.shape)
        return self.theta - torch.bmm(self.a.transpose(1, 2), self.b)

    def matmul(self, x: torch.Tensor, xa: torch.Tensor | None = None) -> torch.Tensor:
        """(T, N, out) = x W_t for rows x (T, N, in); ``xa`` = x a_tᵀ if already known."""
        out = _shared_matmul(x, self.theta, self.shared)
        if self.a is None:
            return out
        if xa is None:
            xa = torch.bmm(x, self.a.transpose(1, 2))
        return out - torch.bmm(xa, self.b)

    def matmul_t(self, d: torch.Tensor) -> torch.Tensor:
        """(T, N, in) = d W_tᵀ for errors d (T, N, out)."""
        out = d @ self.theta.T
        if self.a is None:
            return out
        return out - torch.bmm(torch.bmm(d, self.b.transpose(1, 2)), self.a)

    def step(self, x: torch.Tensor, d: torch.Tensor, lr: float, same_input: bool) -> Factored:
        """W_t − lr xᵀ d: the SGD step for support inputs x (T, K, in) and errors d."""
        if self.a is None:
            return replace(self, a=x, b=d * lr)
        if same_input:  # x is the a of every earlier step: merge, rank stays K
            return replace(self, b=self.b.add(d, alpha=lr))
        return replace(self, a=torch.cat([self.a, x], 1), b=torch.cat([self.b, d * lr], 1))

    def detach(self) -> Factored:
        def det(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach()

        return replace(self, a=det(self.a), b=det(self.b))


def _shared_matmul(x: torch.Tensor, w: torch.Tensor, shared: int) -> torch.Tensor:
    """x (T, N, in) @ w (in, out) when x's first ``shared`` columns are the same on all N rows
    of a task (z = [u; i; ...]): that block is multiplied once per task, not N times."""
    if not shared:
        return x @ w
    return row_times(x[:, :1, :shared], w[:shared]) + x[..., shared:] @ w[shared:]


def _factor_pays(shape: torch.Size, k: int, steps: int, fixed_input: bool) -> bool:
    """Whether W = θ − aᵀb is cheaper than per-task weights: a row costs r (in + out)
    multiply-adds against the factors (rank r = K for a fixed input, else K per step) and
    in · out against a dense weight, which also has to be formed, stepped and kept."""
    n_in, n_out = shape
    rank = k if fixed_input else k * steps
    return rank * (n_in + n_out) < n_in * n_out


_CLOSED_FORM_GROUPS = frozenset({"projection", "user", "decision"})


def closed_form_supported(scorer: Scorer, adapt_keys: Sequence[str]) -> bool:
    """Whether :func:`closed_form_inner_loop` covers these settings: at least one hidden layer
    and no adapted ID tables (their gradient is a per-row scatter the loop does not form)."""
    return bool(scorer.cfg.hidden) and all(
        param_group(k) in _CLOSED_FORM_GROUPS for k in adapt_keys
    )


def _bias(b: torch.Tensor) -> torch.Tensor:
    """A shared (o,) or per-task (T, o) bias, broadcastable against (T, N, o)."""
    return b.unsqueeze(1) if b.dim() == 2 else b


def _relu_grad(d: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """d ⊙ 1[pre > 0] in one op: ReLU's own backward kernel (its derivative w.r.t. ``pre`` is
    zero, as for the autograd inner loop)."""
    return torch.ops.aten.threshold_backward(d, pre, 0.0)


def _flat_t_mm(x: torch.Tensor, d: torch.Tensor, shared: int = 0) -> torch.Tensor:
    """Σ_t x_tᵀ d_t as one GEMM: (T, N, i), (T, N, o) -> (i, o). The first ``shared`` columns
    of x are the same on a task's rows (see _shared_matmul): their block is Σ_t x_t0ᵀ Σ_n d_tn."""
    if not shared:
        return x.reshape(-1, x.shape[-1]).T @ d.reshape(-1, d.shape[-1])
    return torch.cat([x[:, 0, :shared].T @ d.sum(1), _flat_t_mm(x[..., shared:], d)], 0)


@dataclass(frozen=True, eq=False)
class _Rows:
    """One set of rows per task (the support, or the query) and what the passes need of it."""

    user_x: torch.Tensor  # (T, d_user_in)
    item_x: torch.Tensor  # (T, N, d_item_in)
    y: torch.Tensor  # (T, N)
    weights: torch.Tensor  # (T, N) row weights of the loss (Scorer.row_weights)
    bias: torch.Tensor | None  # (T, N) item-bias term of the output (never adapted)


def _forward_backward(
    scorer: Scorer,
    p: Mapping[str, torch.Tensor],  # current params; MLP weights named in ``fac`` are unused
    fac: Mapping[str, Factored],
    rows: _Rows,
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],  # (u, i, z) from mlp_input
    keys: set[str],
    lowest: int,
    moving: bool,
    first: tuple[torch.Tensor, torch.Tensor] | None = None,
    summed: bool = False,
    own: frozenset[str] = frozenset(),
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[torch.Tensor], dict[int, torch.Tensor]]:
    """One closed-form forward/backward pass of the task losses.

    Returns (out (T, N), grads, layer inputs, layer errors δ_l). ``grads`` holds d L_t / d key
    per task for ``keys`` except MLP weights in ``own`` (the caller steps them from the layer
    inputs and errors), or with ``summed`` the sum over tasks for every key. ``first`` =
    (z θ0, z a0ᵀ) when the first layer's products are precomputed (fixed support input).
    """
    u, i, z = inputs
    n_layers = len(scorer.cfg.hidden)
    ins, pres = [], []
    h = z
    for li in range(n_layers):
        w, b = fac.get(f"mlp.{li}.w"), p[f"mlp.{li}.b"]
        if li == 0 and first is not None:
            z_theta, gram = first
            pre = z_theta + _bias(b) if w.a is None else z_theta - gram @ w.b + _bias(b)
        elif w is not None:
            pre = w.matmul(h) + _bias(b)
        else:
            pre = affine(h, p[f"mlp.{li}.w"], b)
        ins.append(h)
        pres.append(pre)
        h = torch.relu(pre)
    out = linear_head(h, p["head.w"], p["head.b"])  # (T, N)
    if rows.bias is not None:
        out = out + rows.bias
    g = scorer.row_loss_grad(out, rows.y, rows.weights)  # (T, N) d L_t / d out
    grads: dict[str, torch.Tensor] = {}
    if "head.w" in keys:
        # hᵀ g has one output column: multiply-and-sum, not MKL's threaded gemv (row_times)
        hg = h * g.unsqueeze(-1)  # (T, N, H)
        grads["head.w"] = hg.sum((0, 1)).unsqueeze(-1) if summed else hg.sum(1).unsqueeze(-1)
    if "head.b" in keys:
        grads["head.b"] = g.sum().reshape(1) if summed else g.sum(1, keepdim=True)  # (T, 1)
    dh = g.unsqueeze(-1) * p["head.w"].transpose(-1, -2)  # (T, N, H)
    errors: dict[int, torch.Tensor] = {}
    for li in range(n_layers - 1, lowest - 1, -1):
        d = _relu_grad(dh, pres[li])  # (T, N, h_li)
        errors[li] = d
        wk, bk = f"mlp.{li}.w", f"mlp.{li}.b"
        if wk in keys and summed:
            # layer 0's input is z = [u; i; ...]: u is the same on all of a task's rows
            grads[wk] = _flat_t_mm(ins[li], d, scorer.cfg.d_user_rep if li == 0 else 0)
        elif wk in keys and wk not in own:
            grads[wk] = torch.bmm(ins[li].transpose(1, 2), d)
        if bk in keys:
            grads[bk] = d.sum((0, 1)) if summed else d.sum(1)
        if li > lowest or moving:
            w = fac.get(wk)
            dh = w.matmul_t(d) if w is not None else d @ p[wk].transpose(-1, -2)
    if moving:
        gi = _input_grads(scorer, dh, u, i, rows.user_x, rows.item_x, keys)
        grads.update({k: v.sum(0) for k, v in gi.items()} if summed else gi)
    return out, grads, ins, errors


def _layer_plan(scorer: Scorer, keys: set[str]) -> tuple[bool, int]:
    """(moving, lowest): whether the MLP input z moves with φ (projections or the user vector
    adapt), and the lowest layer whose error the backward pass must reach."""
    n_layers = len(scorer.cfg.hidden)
    moving = any(param_group(k) != "decision" for k in keys)
    adapted = [li for li in range(n_layers) if {f"mlp.{li}.w", f"mlp.{li}.b"} & keys]
    return moving, 0 if moving else min(adapted, default=n_layers)


def closed_form_inner_loop(
    scorer: Scorer,
    params: Mapping[str, torch.Tensor],
    user_x: torch.Tensor,  # (T, d_user_in)
    item_x: torch.Tensor,  # (T, K, d_item_in) support items
    rows: torch.Tensor,  # (T, K) ID-table rows
    y: torch.Tensor,  # (T, K)
    mask: torch.Tensor,  # (T, K)
    adapt_keys: Sequence[str],
    steps: int,
    step_sizes: StepSizes,
    first_order: bool,
    low_rank: bool = True,
) -> tuple[Params, dict[str, Factored]]:
    """:func:`inner_loop` on the scorer's support loss with hand-derived gradients.

    Returns ``({**params, k: φ_k}, factored)``: MLP weights named in ``factored`` stay θ in the
    dict and φ's are the :class:`Factored` (use :func:`densify` or :func:`scorer_forward`).
    Differentiability follows :func:`inner_loop`: second order keeps the whole loop in the
    graph; first order gives φ = θ − α Σ_s g_s with the g_s constant.
    """
    cfg = scorer.cfg
    keys = tuple(adapt_keys)
    key_set = set(keys)
    track = not first_order and any(params[k].requires_grad for k in keys)
    moving, lowest = _layer_plan(scorer, key_set)
    n_tasks, k_rows = rows.shape
    factored_keys = {
        k
        for li in range(len(cfg.hidden))
        if low_rank
        and (k := f"mlp.{li}.w") in key_set
        and isinstance(step_sizes[k], float)
        and _factor_pays(params[k].shape, k_rows, steps, li == 0 and not moving)
    }

    with torch.enable_grad() if track else torch.no_grad():
        base = dict(params) if track else {k: v.detach() for k, v in params.items()}
        sizes = {
            k: (v.detach() if isinstance(v, torch.Tensor) and not track else v)
            for k, v in ((k, step_sizes[k]) for k in keys)
        }
        # the first layer's input z = [u; i; ...] repeats u on every row of a task
        fac = {
            k: Factored(base[k], None, None, cfg.d_user_rep if k == "mlp.0.w" else 0)
            for k in factored_keys
        }
        fast = {k: base[k].expand(n_tasks, *base[k].shape) for k in keys if k not in fac}
        # MLP weights stepped straight from layer inputs and errors (factored, or fused GEMM)
        own = frozenset(
            k
            for k in keys
            if k.startswith("mlp.") and k.endswith(".w") and isinstance(sizes[k], float)
        )
        total: Params = {}  # Σ_s g_s of first-order keys with learned (tensor) step sizes
        has_bias = bool(cfg.n_items and cfg.use_item_bias)
        support = _Rows(
            user_x,
            item_x,
            y,
            scorer.row_weights(mask),
            scorer.bias_term(base, rows) if has_bias else None,
        )
        inputs = first = None
        if not moving:
            inputs = scorer.mlp_input(base, user_x, item_x, rows)
            if "mlp.0.w" in fac:
                z = inputs[2]
                # (T, K, h1) z θ0 and (T, K, K) Gram z zᵀ = z a0ᵀ for every step, once
                first = (
                    _shared_matmul(z, base["mlp.0.w"], cfg.d_user_rep),
                    torch.bmm(z, z.transpose(1, 2)),
                )
        for _ in range(steps):
            p = {**base, **fast}
            if moving:
                inputs = scorer.mlp_input(p, user_x, item_x, rows)
            _, grads, ins, errors = _forward_backward(
                scorer, p, fac, support, inputs, key_set, lowest, moving, first, own=own
            )
            for k in keys:  # the SGD step
                lr = sizes[k]
                if k in own:
                    li = int(k.split(".")[1])
                    if k in fac:
                        fac[k] = fac[k].step(ins[li], errors[li], lr, li == 0 and not moving)
                    else:  # W − α hᵀδ as one GEMM: no (T, in, out) gradient tensor
                        fast[k] = torch.baddbmm(
                            fast[k], ins[li].transpose(1, 2), errors[li], alpha=-lr
                        )
                    continue
                gk = grads[k]
                if not track and not isinstance(lr, float):
                    total[k] = gk if k not in total else total[k] + gk
                fast[k] = fast[k].add(gk, alpha=-lr) if isinstance(lr, float) else fast[k] - lr * gk

    out_params = dict(params)
    for k in keys:
        theta = params[k]
        if k in fac:
            f = fac[k]
            fac[k] = f if track else replace(f, theta=theta).detach()
            continue
        phi = fast[k]
        lr = step_sizes[k]
        if not track and (
            theta.requires_grad or (isinstance(lr, torch.Tensor) and lr.requires_grad)
        ):
            # first order: φ = θ − α Σ_s g_s keeps its identity path to θ (and to α)
            if isinstance(lr, float):
                phi = theta + (phi - theta.detach())
            elif k in total:
                phi = theta - lr * total[k]
            else:
                phi = theta.expand(n_tasks, *theta.shape)
        out_params[k] = phi
    return out_params, fac


def closed_form_first_order_meta_grads(
    scorer: Scorer,
    params: Mapping[str, torch.Tensor],
    x: TaskInputs,
    steps: int,
    lr: float,
) -> tuple[torch.Tensor, Params]:
    """FOMAML with every parameter adapted, no autograd at all: the meta-gradient is
    mean_t ∇_φ L_query,t(φ_t) (φ's identity path to θ), which is one more closed-form
    forward/backward, on the query rows, summed over tasks (weights: one GEMM each)."""
    keys = tuple(params)
    key_set = set(keys)
    with torch.no_grad():
        base = {k: v.detach() for k, v in params.items()}
        fast, fac = closed_form_inner_loop(
            scorer,
            base,
            x.user_x,
            x.s_x,
            x.s_rows,
            x.s_y,
            x.s_mask,
            keys,
            steps,
            dict.fromkeys(keys, lr),
            True,
        )
        moving, _ = _layer_plan(scorer, key_set)
        inputs = scorer.mlp_input(fast, x.user_x, x.q_x, x.q_rows)
        # rows weighted 1/T: the meta-loss is the mean of the task losses
        query = _Rows(x.user_x, x.q_x, x.q_y, scorer.row_weights(x.q_mask) / x.n_tasks, None)
        out, grads, _, _ = _forward_backward(
            scorer, fast, fac, query, inputs, key_set, 0, moving, summed=True
        )
        loss = scorer.task_losses(out, x.q_y, x.q_mask).mean()
    return loss, {k: grads[k] for k in keys}


def densify(params: Params, factored: Mapping[str, Factored], n_tasks: int) -> Params:
    """``params`` with every factored weight formed as its (T, in, out) per-task tensor."""
    return {**params, **{k: f.dense(n_tasks) for k, f in factored.items()}}


def _input_grads(
    scorer: Scorer,
    dz: torch.Tensor,  # (T, K, d_phi) error at the MLP input
    u: torch.Tensor,  # (T, 1, du)
    i: torch.Tensor,  # (T, K, di)
    user_x: torch.Tensor,  # (T, d_user_in)
    item_x: torch.Tensor,  # (T, K, d_item_in)
    keys: set[str],
) -> dict[str, torch.Tensor]:
    """Projection / user-vector gradients from the error at z = [u; i; u ⊙ i]."""
    cfg = scorer.cfg
    du, di = cfg.d_user_rep, cfg.d_item_rep
    g_u = dz[..., :du].sum(1)  # (T, du): u is shared by the task's K rows
    g_i = dz[..., du : du + di]  # (T, K, di)
    if cfg.interaction:
        g_ui = dz[..., du + di :]
        g_u = g_u + (g_ui * i).sum(1)
        g_i = g_i + g_ui * u
    out: dict[str, torch.Tensor] = {}
    if "user_vec" in keys:
        out["user_vec"] = g_u
    if "user_proj.b" in keys:
        out["user_proj.b"] = g_u
    if "user_proj.w" in keys:
        out["user_proj.w"] = user_x.unsqueeze(2) * g_u.unsqueeze(1)  # (T, d_user_in, du)
    if "item_proj.b" in keys:
        out["item_proj.b"] = g_i.sum(1)
    if "item_proj.w" in keys:
        out["item_proj.w"] = torch.bmm(item_x.transpose(1, 2), g_i)  # (T, d_item_in, di)
    return out


def scorer_forward(
    scorer: Scorer,
    params: Mapping[str, torch.Tensor],
    factored: Mapping[str, Factored],
    user_x: torch.Tensor,
    item_x: torch.Tensor,
    rows: torch.Tensor,
) -> torch.Tensor:
    """``scorer.apply`` for (per-task) params whose MLP weights may be :class:`Factored`."""
    if not factored:
        return scorer.apply(params, user_x, item_x, rows)
    _, _, h = scorer.mlp_input(params, user_x, item_x, rows)
    for li in range(len(scorer.cfg.hidden)):
        w, b = factored.get(f"mlp.{li}.w"), params[f"mlp.{li}.b"]
        pre = affine(h, params[f"mlp.{li}.w"], b) if w is None else w.matmul(h) + _bias(b)
        h = torch.relu(pre)
    out = linear_head(h, params["head.w"], params["head.b"])
    if scorer.cfg.n_items and scorer.cfg.use_item_bias:
        out = out + scorer.bias_term(params, rows)
    return out
