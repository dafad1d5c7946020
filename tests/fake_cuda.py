"""A CUDA device simulated on a CPU-only machine, to find device bugs where no GPU is lent.

Tensors "on cuda" are ordinary CPU tensors tagged in a weak dictionary. A
``TorchDispatchMode`` carries the tag through every aten op and records what would fail on
a real GPU:

- an op mixing a CUDA tensor with a CPU tensor of one or more dimensions (0-dim CPU
  tensors are allowed there, as on a GPU);
- a CPU tensor indexed with CUDA indices, or CUDA values put into a CPU tensor;
- ``.numpy()`` of a CUDA tensor (a GPU needs ``.cpu()`` first);
- a CPU ``torch.Generator`` drawing a CUDA result.

It cannot check numerics, kernels, memory or NCCL; that is what ``test_cuda.py`` on a real
GPU is for. ``nn.Module.to("cuda")`` does not tag a module's parameters (it assigns
``param.data``), so modules moved that way are not checked; metarec moves parameter
dicts, not modules. Install it in a fresh process only (it patches ``torch.Tensor`` for good):
``fake_cuda.install()`` before metarec runs, then read ``fake_cuda.VIOLATIONS``.
``tests/test_fake_cuda.py`` runs ``test_cuda.py`` under it.
"""

from __future__ import annotations

import threading
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakTensorKeyDictionary

CUDA = WeakTensorKeyDictionary()  # tensor -> True: it "lives on cuda"
# made inside autograd's backward from the forward tensor's real (CPU) options: the real
# device of such a tensor would be the forward tensor's, so it may meet either
WILD = WeakTensorKeyDictionary()
VIOLATIONS: dict[str, dict] = {}  # site key -> {"kind", "detail", "stack", "n"}
OPS_ON_CUDA = [0]
_tls = threading.local()
_FAKE = torch.device("cuda", 0)

aten = torch.ops.aten
# cross-device copies: the ops a real GPU allows to mix devices
_COPY_OPS = {
    aten._to_copy.default,
    aten.copy_.default,
    aten.copy.default,
    aten._local_scalar_dense.default,
    aten.lift_fresh.default,
    aten.lift_fresh_copy.default,
    aten._has_compatible_shallow_copy_type.default,
}
_INDEX_OPS = {
    aten.index.Tensor,
    aten.index_put_.default,
    aten.index_put.default,
    aten._index_put_impl_.default,
    aten._unsafe_index.Tensor,
}
_PUT_OPS = {aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


def is_cuda(t) -> bool:
    return isinstance(t, torch.Tensor) and CUDA.get(t, False)


def _stack() -> str:
    frames = traceback.extract_stack()[:-3]
    keep = [f for f in frames if "/metarec/" in f.filename or "/tests/" in f.filename]
    keep = keep[-8:] if keep else frames[-8:]
    return "\n".join(
        f"    {f.filename.split('/src/')[-1]}:{f.lineno} {f.name}: {f.line}" for f in keep
    )


def _record(kind: str, detail: str) -> None:
    st = _stack()
    key = f"{kind}|{detail.split('(')[0]}|{st.splitlines()[-1] if st else ''}"
    v = VIOLATIONS.setdefault(key, {"kind": kind, "detail": detail, "stack": st, "n": 0})
    v["n"] += 1


def _is_cuda_dev(d) -> bool:
    return d is not None and torch.device(d).type == "cuda"


def _mark(table: WeakTensorKeyDictionary, out) -> None:
    def mark(x):
        if isinstance(x, torch.Tensor):
            table[x] = True
        return x

    tree_map(mark, out)


class FakeCudaMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        dev_kw = kwargs.get("device")
        explicit = dev_kw is not None
        want_cuda = _is_cuda_dev(dev_kw) if explicit else None
        if explicit and want_cuda:
            kwargs["device"] = torch.device("cpu")
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        tagged = [is_cuda(t) for t in tensors]
        any_cuda = any(tagged)
        gen = kwargs.get("generator")
        if (
            gen is not None
            and (want_cuda or (not explicit and any_cuda))
            and gen.device.type == "cpu"
        ):
            _record("cpu-generator", f"{func} with a CPU generator for a CUDA result")
        in_backward = torch._C._current_graph_task_id() != -1
        if func not in _COPY_OPS and any_cuda and not in_backward:
            if func in _INDEX_OPS:
                target = args[0]
                values = [args[2]] if func in _PUT_OPS else []
                idx = [t for t in tree_flatten(args[1])[0] if isinstance(t, torch.Tensor)]
                if not is_cuda(target):
                    if any(is_cuda(t) for t in idx):
                        _record("index-device", f"{func}: CPU tensor indexed with CUDA indices")
                    if any(is_cuda(t) for t in values):
                        _record("mixed-device", f"{func}: CUDA values put into a CPU tensor")
                else:
                    for t in values:
                        if not is_cuda(t) and t.dim() > 0:
                            shape = tuple(t.shape)
                            _record("mixed-device", f"{func}: CPU values {shape} into CUDA")
            else:
                for t, c in zip(tensors, tagged, strict=True):
                    if not c and t.dim() > 0 and not WILD.get(t, False):
                        shapes = [
                            (tuple(x.shape), "cuda" if y else "cpu")
                            for x, y in zip(tensors, tagged, strict=True)
                        ]
                        _record("mixed-device", f"{func} {shapes}")
                        break
        if any_cuda or want_cuda:
            OPS_ON_CUDA[0] += 1
        out = func(*args, **kwargs)
        wild_in = any(WILD.get(t, False) for t in tensors)
        if in_backward and explicit and not want_cuda:
            explicit = False  # autograd formulas pass the forward tensor's real options
        if func is aten._to_copy.default:
            tag = want_cuda if explicit else bool(tagged and tagged[0])
        elif explicit:
            tag = want_cuda
        else:
            tag = any_cuda
        if getattr(_tls, "untag", False):
            tag = False
        if not tag and in_backward and (not tensors or wild_in):
            _mark(WILD, out)
        if tag:
            _mark(CUDA, out)
        return out


_orig: dict = {}


def install() -> FakeCudaMode:
    """Make ``torch.cuda.is_available()`` true and start tagging; for a fresh process."""
    T = torch.Tensor
    for name in ("numpy", "cpu", "to"):
        _orig[name] = getattr(T, name)
    real_device = torch._C.TensorBase.device.__get__

    T.device = property(lambda self: _FAKE if is_cuda(self) else real_device(self))
    T.is_cuda = property(is_cuda)
    T.get_device = lambda self: 0 if is_cuda(self) else -1

    def numpy(self, *a, **k):
        if is_cuda(self):
            _record("numpy-on-cuda", f"numpy() of a CUDA tensor {tuple(self.shape)}")
        return _orig["numpy"](self, *a, **k)

    def _untagged_alias(t):
        # `.cpu()` of a CUDA tensor is a new tensor on a GPU; here the same storage, untagged
        _tls.untag = True
        try:
            return t.view_as(t)
        finally:
            _tls.untag = False

    def cpu(self, *a, **k):
        out = _orig["cpu"](self, *a, **k)
        return _untagged_alias(self) if out is self and is_cuda(self) else out

    def to(self, *a, **k):
        device, dtype = k.pop("device", None), k.pop("dtype", None)
        rest = []
        for x in a:
            if isinstance(x, (str, torch.device)):
                device = x
            elif isinstance(x, torch.dtype):
                dtype = x
            elif isinstance(x, torch.Tensor):
                device, dtype = x.device, x.dtype
            elif isinstance(x, bool):
                k["non_blocking"] = x
            elif x is not None:
                rest.append(x)
        if device is None:
            out = _orig["to"](self, *([dtype] if dtype is not None else []), *rest, **k)
            if is_cuda(self):
                CUDA[out] = True
            return out
        if torch.device(device).type == "cuda":
            if not is_cuda(self):
                k.pop("copy", None)
                k["copy"] = True  # a real move is a new tensor
            out = _orig["to"](self, "cpu", dtype or self.dtype, *rest, **k)
            CUDA[out] = True
            return out
        out = _orig["to"](self, torch.device(device), dtype or self.dtype, *rest, **k)
        return _untagged_alias(self) if out is self and is_cuda(self) else out

    T.numpy, T.cpu, T.to = numpy, cpu, to
    T.cuda = lambda self, device=None, non_blocking=False, **k: to(
        self, device or "cuda", non_blocking=non_blocking
    )

    def factory(name):
        orig = getattr(torch, name)

        def made(*a, **k):
            if not _is_cuda_dev(k.get("device")):
                return orig(*a, **k)
            k["device"] = "cpu"
            out = orig(*a, **k)
            if name == "as_tensor" and a and out is a[0] and not is_cuda(a[0]):
                out = a[0].clone()  # a move: not the caller's CPU tensor tagged in place
            CUDA[out] = True
            return out

        setattr(torch, name, made)

    for name in ("tensor", "as_tensor"):
        factory(name)
    cuda = torch.cuda
    cuda.is_available = lambda: True
    cuda.device_count = lambda: 1
    cuda._lazy_init = lambda: None
    cuda.is_initialized = lambda: True
    cuda.get_device_name = lambda *a, **k: "FakeCUDA"
    cuda.set_device = lambda *a, **k: None
    cuda.synchronize = lambda *a, **k: None
    cuda.current_device = lambda: 0
    # a dispatch mode holds in the thread that entered it only: serve adapts and scores
    # in worker threads (Starlette's run_in_threadpool, anyio's WorkerThread, which
    # overrides Thread.run), where ops went unchecked. Every thread started from here on
    # enters one first
    bootstrap = threading.Thread._bootstrap_inner

    def bootstrap_in_mode(self):
        with FakeCudaMode():
            bootstrap(self)

    threading.Thread._bootstrap_inner = bootstrap_in_mode
    mode = FakeCudaMode()
    mode.__enter__()
    return mode


def report() -> str:
    lines = [f"fake_cuda: {OPS_ON_CUDA[0]} ops on cuda, {len(VIOLATIONS)} violation site(s)"]
    for v in VIOLATIONS.values():
        lines.append(f"[{v['kind']}] x{v['n']} {v['detail']}\n{v['stack']}")
    return "\n".join(lines)
