"""The one check of a torch device name, used by fitting, scoring and the text encoder.

A device is "cpu", "cuda", "cuda:N" or "auto" (CUDA when this process sees a GPU, else
the CPU). Anything else — a name torch does not know, another backend (meta, mps), CUDA on a
machine without it, a GPU index past the count — is a one-line :class:`MetarecError` before
any work, rather than a traceback from deep inside torch after the text was embedded.
"""

from __future__ import annotations

import torch

from metarec.errors import MetarecError


def resolve_device(device: str | torch.device | None, what: str = "device") -> torch.device:
    """``device`` checked and resolved ("auto" and None: cuda if available, else cpu for
    "auto"; None is the CPU). ``what`` names it in errors ("device", "text device")."""
    if device is None:
        return torch.device("cpu")
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise MetarecError(f"unknown {what} {str(device)!r} (cpu, cuda, cuda:N or auto)") from None
    if dev.type not in ("cpu", "cuda"):
        raise MetarecError(f"{what} {str(device)!r} is not supported (cpu, cuda, cuda:N or auto)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MetarecError(f"{what} {str(device)!r}: no CUDA GPU is available to this process")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MetarecError(
            f"{what} {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
        )
    return dev
