"""Training checkpoints: tensors in safetensors, everything else in JSON, written atomically.

Layout of a checkpoint directory::

    ckpt-00000500.safetensors   tensors (params, optimiser moments, RNG state as uint8)
    checkpoint.json             {"tensors": "ckpt-00000500.safetensors", "state": {...}}

The tensor file is written first under a new name, then ``checkpoint.json`` is replaced
atomically (temp file + ``os.replace``); so the JSON always names a complete tensor file and a
crash at any point leaves the previous checkpoint readable. Older tensor files are removed
after the switch. No pickle anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from metarec.atomic import atomic_path, save_safetensors, write_text
from metarec.types import MetarecError

INDEX = "checkpoint.json"


def save_checkpoint(
    directory: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict
) -> Path:
    """Write tensors and JSON-able ``state`` as the checkpoint of ``step``; returns the index."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:08d}.safetensors"
    # safetensors wants contiguous CPU tensors that share no storage
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(d / name) as tmp:
        save_safetensors(flat, tmp)
    write_text(d / INDEX, json.dumps({"tensors": name, "step": step, "state": state}, indent=1))
    for old in d.glob("ckpt-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return d / INDEX


def has_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / INDEX).is_file()


def checkpoint_tensor_files(directory: str | Path) -> list[Path]:
    """The tensor files in ``directory``, oldest step first ([] for no folder)."""
    d = Path(directory)
    return sorted(d.glob("ckpt-*.safetensors")) if d.is_dir() else []


def load_checkpoint(directory: str | Path) -> tuple[int, dict[str, torch.Tensor], dict]:
    """(step, tensors, state) of the checkpoint in ``directory``."""
    d = Path(directory)
    try:
        index = json.loads((d / INDEX).read_text())
        if not isinstance(index, dict) or not isinstance(index.get("tensors"), str):
            raise KeyError("tensors")
        step = index["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise KeyError(f"step (not a count of steps: {step!r})")
        tensor_path = d / Path(index["tensors"]).name  # a name in this folder, nothing else
    except FileNotFoundError as err:
        raise MetarecError(f"checkpoint: missing file {err.filename}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError) as err:
        raise MetarecError(f"checkpoint: {d / INDEX} is malformed ({err})") from None
    if not tensor_path.is_file():
        raise MetarecError(f"checkpoint: missing file {tensor_path} (named by {d / INDEX})")
    try:
        tensors = load_file(str(tensor_path))
    except Exception as err:  # safetensors' own error type for a damaged file
        lines = str(err).strip().splitlines()
        raise MetarecError(
            f"checkpoint: {tensor_path} is damaged ({lines[0] if lines else type(err).__name__})"
        ) from None
    return step, tensors, index.get("state")
