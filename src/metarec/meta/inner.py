"""The one gradient inner loop, batched over the tasks of a meta-batch.

Every adapted parameter gets a leading task dimension: θ (shape S) becomes φ (T, *S), starting
as a broadcast view of θ. Because task t's support loss depends only on φ[t], the gradient
of Σ_t L_t w.r.t. the stacked φ is exactly the stack of per-task gradients, so ONE
``torch.autograd.grad`` call per step adapts all T tasks, and the scorer runs them as
batched GEMMs (``baddbmm`` over (T, in, out) weights). On CPU this beats ``torch.func.vmap``
over a per-task function by a wide margin (see ``metarec.meta.bench``), and it gives the
same numbers as the per-task loop (:func:`loop_meta_grads`, kept as the test oracle).

Settings that make the algorithms (see ``algorithms.py``):
  * which keys adapt (all decision/user/projection layers for MAML; decision only for MeLU)
  * step sizes: a float, or learned per-parameter tensors (Meta-SGD)
  * ``first_order``: the inner gradients are treated as constants (FOMAML / Reptile); φ keeps
    its identity path to θ (and to learned step sizes), only the Hessian terms are dropped.

``inner_loop`` is pure: it never writes to ``params``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

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
