"""The data half of the CLI contract: `metarec datasets|info|split`, bad input -> exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metarec.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_datasets_lists_every_loader(capsys):
    code, out, _ = run_cli(capsys, "datasets", "--json")
    assert code == 0
    names = {row["name"] for row in json.loads(out)}
    assert {
        "movielens-100k",
        "movielens-1m",
        "goodbooks",
        "goodbooks-sample",
        "amazon-food-kitchen",
        "amazon-scientific",
        "lastfm-hetrec",
        "csv",
        "parquet",
    } <= names


def test_datasets_says_which_folder_each_needs_and_whether_it_is_there(
    capsys, monkeypatch, tmp_path
):
    (tmp_path / "ml-100k").mkdir()
    for f in ("u.data", "u.item", "u.user"):
        (tmp_path / "ml-100k" / f).write_text("")
    # a folder without the files its reader needs is not "found" (ml-1m without its
    # ratings.dat was, and `info` then failed)
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "movies.dat").write_text("")
    monkeypatch.setenv("METAREC_DATA_DIR", str(tmp_path))
    code, out, _ = run_cli(capsys, "datasets")
    assert code == 0
    assert "folder: $METAREC_DATA_DIR/ml-100k (found)" in out
    assert "folder: $METAREC_DATA_DIR/ml-1m (incomplete: no ratings.dat)" in out
    assert "folder: $METAREC_DATA_DIR/goodbooks-10k (not found)" in out
    rows = {r["name"]: r for r in json.loads(run_cli(capsys, "datasets", "--json")[1])}
    assert rows["movielens-100k"]["present"] and not rows["movielens-1m"]["present"]
    assert rows["movielens-1m"]["missing_files"] == ["ratings.dat"]
    assert "present" not in rows["goodbooks-sample"]  # bundled: no folder to look for
    monkeypatch.delenv("METAREC_DATA_DIR")
    assert "(METAREC_DATA_DIR is unset; or pass --path)" in run_cli(capsys, "datasets")[1]


def test_info_prints_text_not_python_reprs(capsys, monkeypatch):
    monkeypatch.delenv("METAREC_DATA_DIR", raising=False)
    code, out, _ = run_cli(capsys, "info", "goodbooks-sample")
    assert code == 0
    assert "rating_counts: 1: 1232, 2: 4089, 3: 13227" in out
    assert "{" not in out and "None" not in out and "[" not in out


def test_info_bundled_needs_no_path(capsys, monkeypatch):
    monkeypatch.delenv("METAREC_DATA_DIR", raising=False)
    code, out, _ = run_cli(capsys, "info", "goodbooks-sample", "--json")
    assert code == 0
    info = json.loads(out)
    # Published shape of the sample (shared/data/goodbooks-sample/SOURCE.md).
    assert (info["users"], info["items"], info["interactions"]) == (990, 4278, 49886)


def test_split_writes_csvs_and_summary(capsys, tmp_path):
    out_dir = tmp_path / "split"
    code, out, err = run_cli(
        capsys,
        "split",
        "goodbooks-sample",
        "--protocol",
        "user-cold",
        "--k",
        "10",
        "--query",
        "10",
        "--seed",
        "0",
        "--out",
        str(out_dir),
    )
    assert code == 0, err
    for name in ("train", "valid_support", "valid_query", "test_support", "test_query"):
        head = (out_dir / f"{name}.csv").read_text().splitlines()[0]
        assert head.startswith("user_id,item_id,rating")
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary == json.loads(out)


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    "content, needle",
    [
        ("user_id,item_id,rating\n", "empty"),
        ("", "empty"),
        ("user_id,rating\n1,5\n", "item_id"),
        ("user_id,item_id,rating\n1,2,5\n3,4,5,6,7\n", "line"),
        ("user_id,item_id,rating\n,2,5\n", "user_id"),
        (b"user_id,item_id,rating\n1,\xff\xfe,5\n", "decode"),
    ],
    ids=["header-only", "empty-file", "missing-column", "malformed-line", "nan-id", "bad-encoding"],
)
def test_bad_csv_is_one_line_exit_2(capsys, tmp_path, content, needle):
    log = _write(tmp_path / "log.csv", content)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "split", "csv", "--path", str(log), "--out", str(out_dir))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metarec: error:"), err
    assert needle.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in err
    assert not out_dir.exists()


def test_split_says_what_preprocessing_removed(capsys, tmp_path):
    # fit said it, split cut a deduplicated log without a word (probe 134)
    rows = "user_id,item_id,rating,timestamp\n" + "".join(
        f"u{u},i{i},{1 + (u + i) % 5},{u * 10 + i}\n" for u in range(20) for i in range(8)
    )
    log = _write(tmp_path / "log.csv", rows + "u0,i0,1,999\nu1,i1,1,999\n")
    args = ["split", "csv", "--path", str(log), "--k", "2", "--query", "2"]
    code, _, err = run_cli(capsys, *args, "--out", str(tmp_path / "out"))
    assert code == 0
    assert "metarec: warning: 2 of 162 rows of" in err and "step 'dedupe'" in err


def test_k_larger_than_histories_is_exit_2(capsys, tmp_path):
    rows = "user_id,item_id,rating,timestamp\n" + "".join(
        f"u{u},i{i},{1 + (u + i) % 5},{u * 10 + i}\n" for u in range(20) for i in range(5)
    )
    log = _write(tmp_path / "log.csv", rows)
    out_dir = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "split", "csv", "--path", str(log), "--k", "50", "--out", str(out_dir)
    )
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()


def test_split_never_writes_over_its_input_and_refuses_flags_its_protocol_ignores(capsys, tmp_path):
    rows = "user_id,item_id,rating,timestamp\n" + "".join(
        f"u{u},i{i},{1 + (u + i) % 5},{u * 10 + i}\n" for u in range(20) for i in range(6)
    )
    (tmp_path / "d").mkdir()
    log = _write(tmp_path / "d" / "log.csv", rows)
    # --overwrite replaced the log itself (a file) or the folder holding it
    for out in (log, tmp_path / "d"):
        code, _, err = run_cli(
            capsys, "split", "csv", "--path", str(log), "--k", "2", "--out", str(out), "--overwrite"
        )
        assert code == 2 and "holds the input" in err and len(err.strip().splitlines()) == 1
    assert log.read_text() == rows
    code, _, err = run_cli(
        capsys,
        "split",
        "csv",
        "--path",
        str(log),
        "--source",
        "books",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and "read by --protocol cross-domain only" in err


def test_python_dash_m_matches_console_script(tmp_path):
    env = dict(os.environ)
    res = subprocess.run(
        [sys.executable, "-m", "metarec", "datasets", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert any(r["name"] == "goodbooks-sample" for r in json.loads(res.stdout))


@pytest.mark.data
def test_info_movielens_100k_published_counts(capsys):
    root = os.environ.get("METAREC_DATA_DIR")
    if not root:
        pytest.skip("METAREC_DATA_DIR is unset: the real MovieLens-100K files are not available")
    if not (Path(root) / "ml-100k").is_dir():
        pytest.skip(f"ml-100k/ is not under METAREC_DATA_DIR={root}")
    code, out, err = run_cli(
        capsys, "info", "movielens-100k", "--path", str(Path(root) / "ml-100k"), "--json"
    )
    assert code == 0, err
    info = json.loads(out)
    assert (info["interactions"], info["users"], info["items"]) == (100000, 943, 1682)


def test_errors_on_a_terminal_start_a_clean_line(monkeypatch, tmp_path):
    # a bar cut short by the error leaves the cursor after its text; on a terminal the
    # error line clears it first, and off a terminal (logs, pipes) it is the bare line
    import io

    import metarec.cli as cli

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for stream, prefix in ((Tty(), "\r\033[K"), (io.StringIO(), "")):
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setattr(cli, "cmd_info", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
        assert main(["info", "goodbooks-sample"]) == 130
        assert stream.getvalue() == prefix + "metarec: interrupted\n"


def test_split_fills_an_empty_folder_and_replaces_a_split_only_with_overwrite(capsys, tmp_path):
    out = tmp_path / "made_ahead"
    out.mkdir()
    args = ("split", "goodbooks-sample", "--k", "3", "--query", "3", "--out", str(out))
    code, _, _ = run_cli(capsys, *args)
    assert code == 0 and (out / "summary.json").is_file()
    code, _, err = run_cli(capsys, *args, "--seed", "1")  # refused before any work
    assert code == 2 and "--overwrite" in err
    code, _, _ = run_cli(capsys, *args, "--seed", "1", "--overwrite")
    assert code == 0 and json.loads((out / "summary.json").read_text())["params"]["seed"] == 1


def test_column_flags_are_stripped_as_headers_are():
    # --text-cols " title " named a column " title ", missing from the stripped header
    import argparse

    from metarec.cli import _loader_options

    args = argparse.Namespace(text_cols=" title , genres,, ", user_col=" uid ", items=None)
    opts = _loader_options(args)
    assert opts["text_cols"] == ("title", "genres") and opts["user_col"] == "uid"


def test_split_says_when_the_seed_cannot_move_a_split_cut_by_time(capsys, tmp_path):
    """On data with timestamps user-cold holds out the newest users: seeds 0-4 gave five
    identical splits without a word, while summary.json recorded each seed."""
    log = str(Path(__file__).parent / "tiny_log.csv")
    args = ["split", "csv", "--path", log, "--k", "3", "--query", "3"]
    outs = {}
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        code, _, err = run_cli(
            capsys, *args, "--protocol", "user-cold", "--seed", str(seed), "--out", str(out)
        )
        assert code == 0, err
        assert ("changes nothing in this split" in err) == (seed == 1)
        outs[seed] = (out / "test_query.csv").read_text()
    assert outs[0] == outs[1]
    # a seeded draw (warm: random held-out users) gets no note, and the seed moves it
    code, _, err = run_cli(
        capsys, *args, "--protocol", "warm", "--seed", "1", "--out", str(tmp_path / "w")
    )
    assert code == 0 and "changes nothing" not in err
