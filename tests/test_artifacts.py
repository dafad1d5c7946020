import json

import numpy as np
import pytest
import torch

from metarec.artifacts import load_run, save_run
from metarec.types import IdMap, MetarecError


def _save(path, scale=1.0):
    return save_run(
        path,
        config={"model": {"hidden": 8}},
        tensors={"w": torch.arange(6.0).reshape(2, 3) * scale, "b": torch.ones(3)},
        ids={
            "users": IdMap(np.array(["u1", "u2"], dtype=object)),
            "items": IdMap(np.array(["7", "x"], dtype=object)),
        },
        meta={"encoder_fingerprint": "hash:abc"},
    )


def test_round_trip(tmp_path):
    run = load_run(_save(tmp_path / "run"))
    assert torch.equal(run.tensors["w"], torch.arange(6.0).reshape(2, 3))
    assert run.ids["users"].ids.tolist() == ["u1", "u2"]
    assert run.ids["items"].index("x") == 1
    assert run.config == {"model": {"hidden": 8}}
    assert run.meta["encoder_fingerprint"] == "hash:abc"
    assert not any(p.suffix in (".pkl", ".pickle", ".pt") for p in (tmp_path / "run").rglob("*"))


def test_overwrite_replaces_whole_run_and_leaves_no_temp(tmp_path):
    _save(tmp_path / "run")
    _save(tmp_path / "run", scale=2.0)
    assert torch.equal(load_run(tmp_path / "run").tensors["w"], torch.arange(6.0).reshape(2, 3) * 2)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_corrupt_or_foreign_run_is_a_clear_error(tmp_path):
    path = _save(tmp_path / "run")
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(MetarecError, match="checksum"):
        load_run(path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 999
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MetarecError, match="format version 999"):
        load_run(path)
    with pytest.raises(MetarecError, match="not a metarec RUN"):
        load_run(tmp_path)
