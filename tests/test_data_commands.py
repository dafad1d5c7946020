"""The data-side commands (datasets / info / split / embed) on bad paths and odd input,
each test a defect a black-box probe (176) found, on small synthetic data in tmp_path."""

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd

from metarec import atomic
from metarec.cli import main
from metarec.data import load_dataset
from metarec.text.templates import item_texts


def _log(path, users=30, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        for j, i in enumerate(rng.choice(60, int(rng.integers(6, 14)), replace=False)):
            rows.append((f"u{u}", f"i{i}", int(rng.integers(1, 6)), 1000 * u + j))
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(
        path, index=False
    )
    return path


def _split(log, out, *extra):
    return main(
        ["split", "csv", "--path", str(log), "--k", "2", "--query", "2", "--out", str(out), *extra]
    )


def test_split_fills_an_empty_folder_a_killed_split_left_its_staging_in(tmp_path, capsys):
    # README: "A writer killed while staging leaves a hidden .NAME.~host-pid~* file or
    # folder beside its target; the next write of that target on the same host removes it
    # once that process is gone." A `split --out EMPTY` killed (-9) while staging leaves
    # EMPTY/.EMPTY.~host-pid~xxx/; the next split to EMPTY was refused ("not empty"), and
    # with --overwrite too ("not a split folder"): the folder could only be emptied by hand.
    log = _log(tmp_path / "log.csv")
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".out.~{atomic._HOST}-{dead.pid}~abcd1234"
    stale.mkdir()
    (stale / "train.csv").write_text("user_id,item_id,rating\n")
    code = _split(log, out)
    err = capsys.readouterr().err
    assert code == 0, err
    assert (out / "summary.json").is_file()
    assert not stale.exists()


def test_split_warm_with_a_huge_query_is_no_traceback(tmp_path, capsys):
    # user-cold, item-cold and cross-domain take --query 99999999999999999999 ("the next Q,
    # or what remains"); warm raised OverflowError out of main (a traceback, exit 1)
    log = _log(tmp_path / "log.csv")
    code = main(
        ["split", "csv", "--path", str(log), "--protocol", "warm", "--k", "2",
         "--query", "99999999999999999999", "--out", str(tmp_path / "s")]
    )  # fmt: skip
    assert code == 0  # the query is "the next Q, or what remains"
    assert len(pd.read_csv(tmp_path / "s" / "test_query.csv"))


def test_split_overwrite_through_a_symlink_replaces_the_target_not_the_link(tmp_path, capsys):
    # fit --out LINK (a symlink to a RUN) keeps the link and replaces its target
    # (check_run_target: "a symlink's target: the link stays"); split --out LINK
    # --overwrite replaced the link itself with a new folder, leaving the old split
    # where the link pointed
    log = _log(tmp_path / "log.csv")
    real, link = tmp_path / "real", tmp_path / "link"
    assert _split(log, real) == 0
    link.symlink_to(real)
    code = main(
        ["split", "csv", "--path", str(log), "--k", "3", "--query", "2",
         "--out", str(link), "--overwrite"]
    )  # fmt: skip
    assert code == 0
    assert link.is_symlink()
    assert json.loads((real / "summary.json").read_text())["params"]["k_shot"] == 3


def test_split_out_with_a_tilde_is_expanded_as_other_paths_are(tmp_path, capsys, monkeypatch):
    # --cache '~/c', --model '~/m' and a named dataset's --path '~/ml-100k' are expanded
    # (errors.user_path: "a path a user typed ... with ~ expanded as a shell would";
    # `--out=~/sp` is not expanded by the shell). split --out '~/sp' made a folder named
    # "~" in the working folder, cut the split, then failed naming its staging folder
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    log = _log(tmp_path / "log.csv")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    code = _split(log, "~/sp")
    err = capsys.readouterr().err
    assert not (work / "~").exists()
    assert code == 0, err
    assert (home / "sp" / "summary.json").is_file()


def test_csv_path_with_a_tilde_is_expanded_as_a_named_datasets_is(tmp_path, capsys, monkeypatch):
    # `info movielens-100k --path '~/ml-100k'` expands "~"; `info csv --path '~/log.csv'`
    # said "file not found: '~/log.csv'"
    monkeypatch.setenv("HOME", str(tmp_path))
    _log(tmp_path / "log.csv")
    assert main(["info", "csv", "--path", "~/log.csv"]) == 0


def test_one_column_is_not_taken_for_two_roles(tmp_path, capsys):
    # the item side columns refuse a column named in two roles ("give each column one
    # role, once"); the log's did not: --item-col uid read the user ids as items, and
    # --rating-col uid read them as ratings, without a word
    p = tmp_path / "m.csv"
    p.write_text("uid,iid,stars\n1,a,5\n1,b,3\n2,a,4\n")
    base = ["info", "csv", "--path", str(p)]
    assert main([*base, "--user-col", "uid", "--item-col", "uid", "--rating-col", "stars"]) == 2
    assert main([*base, "--user-col", "uid", "--item-col", "iid", "--rating-col", "uid"]) == 2


def test_a_csv_log_named_like_a_builtin_dataset_gets_the_same_item_texts(tmp_path):
    # the csv loader names a dataset after its file; ITEM_TEMPLATES is keyed by the
    # named loaders' names, so a user's goodbooks.csv took goodbooks' "{title} ({year}) —
    # {authors}" and its description column left every text: `embed csv --path
    # goodbooks.csv` warmed texts that `fit --train goodbooks.csv` (dataset "fit") never
    # asks for, and an experiment on that file dropped the column without a word
    n = 20
    pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n)],
            "title": [f"Title {i} of the saga" for i in range(n)],
            "authors": [f"Author {i % 7} Person{i % 5}" for i in range(n)],
            "year": 1900 + np.arange(n),
            "description": [f"Unique blurb {i} about {['war', 'love'][i % 2]}" for i in range(n)],
        }
    ).to_csv(tmp_path / "books.csv", index=False)
    log = pd.DataFrame(
        {
            "user_id": [f"u{i % 4}" for i in range(n)],
            "item_id": [f"i{i}" for i in range(n)],
            "rating": [1 + i % 5 for i in range(n)],
        }
    )
    texts = {}
    for stem in ("goodbooks", "mylog"):
        log.to_csv(tmp_path / f"{stem}.csv", index=False)
        ds = load_dataset("csv", tmp_path / f"{stem}.csv", items=str(tmp_path / "books.csv"))
        texts[stem] = item_texts(ds.name, ds.item_table, ds.n_items)
    assert "Unique blurb 0" in texts["mylog"][0]
    assert texts["goodbooks"] == texts["mylog"]


def test_split_out_that_cannot_be_written_is_refused_before_the_cut(tmp_path, capsys):
    # a parent that is a file said "File exists: log.csv", and "." under --overwrite
    # "Device or resource busy: .", both after loading and cutting the data
    log = _log(tmp_path / "log.csv")
    assert _split(log, tmp_path / "log.csv" / "x") == 2
    assert "log.csv is not a folder" in capsys.readouterr().err
    here = tmp_path / "here"
    assert _split(log, here) == 0
    capsys.readouterr()
    import os

    cwd = os.getcwd()
    os.chdir(here)
    try:
        assert _split(log, ".", "--overwrite") == 2
    finally:
        os.chdir(cwd)
    assert "a . or .. path" in capsys.readouterr().err


def test_fit_out_with_a_tilde_is_the_home_folder(tmp_path, capsys, monkeypatch):
    # fit --out '~/run' trained, then failed on its staging folder, leaving a "~" folder
    from test_cli_contract import FAST

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    log = _log(tmp_path / "log.csv")
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(60)], "title": ["t"] * 60})
    items.to_csv(tmp_path / "I.csv", index=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    argv = ["fit", "--train", str(log), "--items", str(tmp_path / "I.csv"), "--out", "~/run"]
    assert main([*argv, *FAST]) == 0, capsys.readouterr().err
    assert (home / "run" / "manifest.json").is_file() and not (work / "~").exists()


def test_a_parquet_log_of_bool_labels_is_read_as_fit_reads_it(tmp_path, capsys):
    # the bool check refused True in a label column that fit takes as 1
    log = pd.DataFrame(
        {"user_id": [f"u{i % 6}" for i in range(60)], "item_id": [f"i{i % 13}" for i in range(60)]}
    ).drop_duplicates()
    log["label"] = [bool(i % 3) for i in range(len(log))]
    log.to_parquet(tmp_path / "log.parquet")
    assert main(["info", "csv", "--path", str(tmp_path / "log.parquet")]) == 0
    assert re.search(r"feedback: implicit", capsys.readouterr().out)


def test_a_tilde_of_no_such_user_is_left_as_a_shell_leaves_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _log(tmp_path / "~nosuchuser_log.csv")
    assert main(["info", "csv", "--path", "~nosuchuser_log.csv"]) == 0


def test_an_items_column_named_domain_in_another_case_is_said_to_be_no_domain(tmp_path):
    """Probe 183: a "Domain" header in I was taken as a category without a word; the fit
    had one domain, and the mistake showed only at `recommend --domain books`. It is
    still a side column (I may hold any), and the warning says how to name the domain."""
    import warnings

    from metarec.data.files import read_training_files

    log = _log(tmp_path / "T.csv")
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(60)]})
    items["title"] = [f"book {i}" for i in range(60)]
    items[" Domain "] = np.where(np.arange(60) % 2, "books", "films")
    items.to_csv(tmp_path / "I.csv", index=False)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        raw = read_training_files(log, tmp_path / "I.csv")
    lines = [str(w.message) for w in said if "Domain" in str(w.message)]
    assert len(lines) == 1 and "name it 'domain' (lowercase)" in lines[0]
    assert set(raw.ratings["domain"]) == {"default"}  # no domain was read
    # the lowercase header is the domain column, and nothing is said
    items.rename(columns={" Domain ": "domain"}).to_csv(tmp_path / "I.csv", index=False)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        raw = read_training_files(log, tmp_path / "I.csv")
    assert not [w for w in said if "lowercase" in str(w.message)]
    assert set(raw.ratings["domain"]) == {"books", "films"}
