"""What the scripts in ``benchmarks/`` share: their flags, their JSON and their errors.

Each script writes its figures to a ``--json`` file. The path is checked when the flags
are parsed, before any work (a missing folder or a folder given as the file used to fail
with a traceback after minutes of fitting, losing the run); the JSON is strict (NaN and
±inf are null, as in results.json) and written atomically (:func:`metarec.atomic.write_json`). Counts and sizes are checked
by argparse types, and a bad input anywhere is one line and exit 2, as in the CLI.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metarec.errors import MetarecError, user_path


def json_path(text: str) -> Path:
    """argparse type of ``--json``: a file path whose folder exists or can be made."""
    path = user_path(text)
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if path.exists() and not path.is_file():
        # /dev/null passed, and the atomic write refused it after the whole run
        raise argparse.ArgumentTypeError(f"{text} is not a regular file (a device or pipe)")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: {parent} is not a writable folder")
    # os.access says yes to root everywhere (/proc, a read-only mount): write and remove a
    # real file there, or the figures were lost to a traceback after the whole run
    try:
        fd, probe = tempfile.mkstemp(prefix=".metarec-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {e.strerror or e}") from None
    return path


class ScriptParser(argparse.ArgumentParser):
    """argparse with the CLI's error policy: one line on stderr and exit 2 (argparse
    printed its usage block before the error)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _bounded(kind: type, low: float, what: str) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if isinstance(value, float) and not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what.replace(" ", "_")
    return parse


positive_int = _bounded(int, 1, "a positive integer")
nonnegative_int = _bounded(int, 0, "an integer >= 0")
positive_float = _bounded(float, 1e-300, "a positive number")


def embedding_cache() -> str:
    """The embedding cache the library uses: ``$METAREC_HOME/embeddings``."""
    from metarec.data.download import cache_root

    return str(cache_root() / "embeddings")


def machine() -> dict:
    """Where and with what a benchmark ran, for its JSON: the CPU model, cores, torch's
    thread count, the package versions behind the figures (as results.json records them),
    the git commit of the source when it is a checkout, and the time. Benchmark JSONs had
    left these out: "one thread" in the README could not be checked against them."""
    import datetime
    import os
    import subprocess

    import torch

    from metarec.experiment import environment

    cpu = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None
            )
    except OSError:
        pass
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "commit": commit,
        "utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **environment(),
    }


def write_figures(path: str | Path, result: dict) -> None:
    """``result`` with its :func:`machine` record, written atomically as JSON. The record
    describes the process that writes the JSON (bench_serve's server records its own
    settings beside it)."""
    from metarec.atomic import write_json

    write_json(path, {**result, "machine": machine()})


def run_script(main: Callable[[], int | None]) -> None:
    """Run a script's ``main`` and exit: its code, or 2 with one line for a bad input
    (a MetarecError, such as missing data) instead of a traceback."""
    prog = Path(sys.argv[0]).name
    try:
        code = main()
    except MetarecError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code or 0)
