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


def test_the_cli_starts_without_numpy_pandas_or_torch():
    # the CLI catches Ctrl-C from inside main(); everything imported before main() runs is
    # a window where an interrupt ends in a traceback, so it must stay the standard library
    code = (
        "import sys, metarec.cli; "
        "print(sorted(m for m in ('numpy', 'pandas', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert metarec.MetarecError is metarec.types.MetarecError


def test_metarec_evaluate_is_the_module_whatever_was_imported_first():
    # a lazy *function* named evaluate was replaced by the submodule once anything
    # imported metarec.evaluate: the name's meaning hung on import order
    code = (
        "import metarec, types; a = metarec.evaluate; "
        "from metarec.experiment import evaluate_split; b = metarec.evaluate; "
        "print(isinstance(a, types.ModuleType), a is b, callable(a.evaluate))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"]


def test_the_installed_metadata_names_both_licences():
    # the code's Apache-2.0 text and the bundled goodbooks sample's CC BY-SA 4.0 travel
    # with every install (pyproject license-files); an editable install records them too
    from importlib.metadata import metadata

    meta = metadata("metarec")
    assert meta["License-Expression"] == "Apache-2.0"
    files = meta.get_all("License-File") or []
    assert "LICENSE" in files
    assert any(f.endswith("goodbooks-sample/DATA_LICENSE.md") for f in files)


def test_every_relative_link_in_the_docs_has_its_target():
    """Nine committed rerun reports showed 24 plots that were never committed (probe 131)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    docs = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    dead = []
    for md in docs:
        text = md.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            path = target.split("#", 1)[0]
            if not path or re.match(r"[a-z]+:", path):  # an anchor in the page, or a URL
                continue
            if not (md.parent / path).exists():
                dead.append(f"{md.relative_to(root)}: {target}")
    assert not dead, dead
