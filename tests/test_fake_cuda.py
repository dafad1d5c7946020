"""The CUDA tests on a simulated GPU, where no GPU is lent (CI has none).

``test_cuda.py`` skips without a GPU, so a tensor left on the CPU beside CUDA parameters
went unseen until a GPU machine was lent: ``update()`` on a Predictor loaded on CUDA and
``fit`` with features already on CUDA failed there (probe 144). ``fake_cuda`` tags tensors
as on "cuda" and records every op a real GPU would refuse; here it runs ``test_cuda.py``
and requires it to pass with no such op. Each run is its own process: the simulator
patches torch for good.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a real GPU is here: test_cuda.py runs on it"
)


def _run(code: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_simulator_records_what_a_gpu_refuses():
    # without this, a simulator that records nothing would pass every run below
    code = """
import torch, fake_cuda
fake_cuda.install()
assert torch.cuda.is_available()
g = torch.ones(3, device="cuda")
assert g.is_cuda and g.device.type == "cuda"
ok = (g * 2 + torch.tensor(1.0)).cpu().numpy()  # a 0-dim CPU tensor is allowed
assert not fake_cuda.VIOLATIONS, fake_cuda.report()
torch.cat([g, torch.zeros(2)])                  # mixed devices
torch.zeros(5)[torch.tensor([0, 1], device="cuda")]  # CPU indexed by CUDA
g.numpy()                                       # numpy of a CUDA tensor
torch.randn(2, device="cuda", generator=torch.Generator())  # CPU generator
kinds = sorted(v["kind"] for v in fake_cuda.VIOLATIONS.values())
print(kinds)
assert kinds == ["cpu-generator", "index-device", "mixed-device", "numpy-on-cuda"], kinds
# in a worker thread too (serve scores in one), made by a Thread subclass with its own run
import threading
fake_cuda.VIOLATIONS.clear()
class Worker(threading.Thread):
    def run(self):
        torch.cat([torch.ones(2, device="cuda"), torch.zeros(2)])
w = Worker()
w.start()
w.join()
assert [v["kind"] for v in fake_cuda.VIOLATIONS.values()] == ["mixed-device"]
"""
    res = _run(code, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("tests", ["test_cuda.py"])
def test_the_cuda_tests_pass_on_a_simulated_gpu(tests):
    code = f"""
import sys, fake_cuda
fake_cuda.install()
import pytest
rc = pytest.main(["-q", "-p", "no:cacheprovider", "-x", {str(TESTS / tests)!r}])
print(fake_cuda.report())
sys.exit(int(rc) or (3 if fake_cuda.VIOLATIONS else 0))
"""
    res = _run(code)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert " passed" in out and "skipped" not in out.split("fake_cuda:")[0].splitlines()[-1]
    assert "0 violation site(s)" in out
    # ops did reach "cuda": a run where nothing did would pass vacuously
    ops = int(out.split("fake_cuda: ")[1].split(" ops on cuda")[0])
    assert ops > 10_000, out[-2000:]
