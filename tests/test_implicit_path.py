"""The implicit-feedback (0/1 `label`) path of `metarec fit`, `predict`/`recommend`,
`serve`'s feedback store and `update`, on the defects black-box probe 184 found there.
Each test failed on the code before its fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metarec.cli import main

TINY = [
    "--set",
    "text.model='hashing:64'",
    "--set",
    "train.steps=40",
    "--set",
    "train.eval_every=20",
    "--set",
    "progress=false",
]


def _implicit_world(folder: Path, n_users: int = 80, n_items: int = 40) -> tuple[Path, Path]:
    """Two tastes: even users play space items (label 1) and skip a few romance ones
    (label 0), odd users the reverse."""
    rng = np.random.default_rng(0)
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n_items)],
            "title": [
                f"space rocket galaxy star planet {i}"
                if i < n_items // 2
                else f"romance love wedding heart kiss {i}"
                for i in range(n_items)
            ],
        }
    )
    half = n_items // 2
    rows, t = [], 1_000_000
    for u in range(n_users):
        mine = np.arange(half) if u % 2 == 0 else np.arange(half, n_items)
        other = np.arange(half, n_items) if u % 2 == 0 else np.arange(half)
        ev = [(i, 1) for i in rng.choice(mine, 8, replace=False)]
        ev += [(i, 0) for i in rng.choice(other, 3, replace=False)]
        for j in rng.permutation(len(ev)):
            t += 1
            rows.append((f"u{u}", f"i{ev[j][0]}", ev[j][1], t))
    T = pd.DataFrame(rows, columns=["user_id", "item_id", "label", "timestamp"])
    t_path, i_path = folder / "T.csv", folder / "I.csv"
    T.to_csv(t_path, index=False)
    items.to_csv(i_path, index=False)
    return t_path, i_path


def test_rank_model_false_on_labels_is_named_as_a_setting_with_no_effect(tmp_path, capsys):
    """README: "a `--set` key that no model of the fit reads is named ('settings with no
    effect') ... or any `meta.*` key on implicit data, where only the ranking model
    trains". On a label log `--set rank_model=false` is taken and does nothing: the
    ranking model trains all the same, and nothing was said. It is named now, on the
    one "settings with no effect" line, beside `rating_members` on the same fit."""
    t_path, i_path = _implicit_world(tmp_path)
    argv = ["fit", "--train", str(t_path), "--items", str(i_path), "--out", str(tmp_path / "RUN")]
    extra = ["--set", "rank_model=false", "--set", "rating_members=1"]
    assert main([*argv, *TINY, *extra]) == 0
    said = [ln for ln in capsys.readouterr().err.splitlines() if "settings with no effect" in ln]
    assert len(said) == 1, said
    assert "rank_model (implicit data: the ranking model is the only model)" in said[0]
    assert "rating_members" in said[0]


@pytest.mark.parametrize(
    ("stored_by", "read_by", "said"),
    [
        ("explicit 1.0..5.0", "implicit", "a stored one-star rating, a dislike, as a 'played' 1"),
        ("explicit 1.0..10.0", "explicit 1.0..5.0", "each stored rating as a rating on this"),
        ("implicit", "explicit 1.0..5.0", "a stored 'played' 1 as a one-star rating"),
    ],
)
def test_feedback_store_warning_describes_the_misreading_that_happens(
    tmp_path, stored_by, read_by, said
):
    """`metarec update --run IMPLICIT_RUN --feedback STORE_OF_A_1_5_RUN` (and `serve` at
    start) warns: "feedback store ... holds rows stored by a run on explicit 1.0..5.0
    feedback, read here as implicit (a stored 'played' 1 as a one-star rating)". Here it
    is the other way round: a stored one-star rating (a dislike) is read as a 'played'
    1; and between two rating scales nothing is 'played' at all. The parenthetical is one
    fixed example, right only for a label store read by a rating run."""
    from metarec.serve.feedback import FeedbackRow, FeedbackStore

    store = FeedbackStore(tmp_path / "fb.sqlite3")
    store.add("r1", [FeedbackRow("i0", 1.0, None)], written_for=stored_by)
    msg = store.written_for_other(read_by)
    assert msg is not None and said in msg, msg
    assert store.written_for_other(stored_by) is None  # read by its own kind: nothing said


def test_a_parquet_label_outside_0_1_is_named_as_written_not_as_a_numpy_repr(tmp_path, capsys):
    """`fit --train T.parquet` (and `predict`/`recommend --support S.parquet`) with an
    integer label 2: "T.parquet: row 4: label must be 0 or 1, got np.int64(2)". The
    readers' own rule (tabular._bad_cell: "a Parquet cell: 1e+19, not np.float64(1e+19)")
    and the CSV message ("got '2'") name the value as written."""
    t_path, i_path = _implicit_world(tmp_path, n_users=20)
    T = pd.read_csv(t_path)
    T.loc[3, "label"] = 2
    pq = tmp_path / "T.parquet"
    T.to_parquet(pq)
    out = tmp_path / "RUN"
    argv = ["fit", "--train", str(pq), "--items", str(i_path), "--out", str(out), *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "label must be 0 or 1" in err, err
    assert "np.int64" not in err, err
    assert not out.exists()
