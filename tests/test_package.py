import subprocess
import sys

import metarec


def test_public_names_resolve():
    for name in metarec.__all__:
        assert getattr(metarec, name) is not None
    assert metarec.load_dataset is __import__("metarec.data", fromlist=["x"]).load_dataset


def test_import_does_not_load_torch():
    code = "import sys, metarec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
