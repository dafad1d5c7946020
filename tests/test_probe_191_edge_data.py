"""Probe 191: `metarec fit | predict` on timestamps finer than a second.

Timestamps are whole unix seconds everywhere (int64): float seconds (`10.9`), ISO 8601
with a fraction (`...T00:00:00.900`) and a Parquet datetime column in milliseconds are
taken, and `metarec.data.tabular._timestamps` drops the fraction. Two instants of one
user within one second then tie, and the file's order decides between them: an older
re-rating listed after a newer one was kept as the newest, and a log whose distinct
timestamps share a second fitted another model when shuffled, without a word. Ordering by
the fraction is not done (the int64 seconds run through the model, the RUN and the
server); the fraction's loss is said, naming the file and the remedy (sort it by time),
and a file that lists such rows in time order keeps the newest, as the README says.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metarec.cli import main
from test_cli_contract import FAST


def _world(n_users=30, n_items=20, per=8, seed=0):
    """Two tastes ("space" / "garden" titles): even users rate space items 5, garden 1."""
    rng = np.random.default_rng(seed)
    kinds = np.array(["space", "garden"])[np.arange(n_items) % 2]
    items = pd.DataFrame(
        {
            "item_id": [f"it{i}" for i in range(n_items)],
            "title": [f"{k} adventure volume {i}" for i, k in enumerate(kinds)],
        }
    )
    rows = []
    for u in range(n_users):
        taste = "space" if u % 2 == 0 else "garden"
        for t, i in enumerate(rng.choice(n_items, size=per, replace=False)):
            rows.append((f"u{u}", f"it{i}", 5 if kinds[i] == taste else 1, 1000 * u + t))
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    return log, items


def _fit(tmp, log, items, name="RUN"):
    t, i, run = tmp / f"{name}_T.csv", tmp / f"{name}_I.csv", tmp / name
    log.to_csv(t, index=False)
    items.to_csv(i, index=False)
    assert main(["fit", "--train", str(t), "--items", str(i), "--out", str(run), *FAST]) == 0
    return run


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe191")
    log, items = _world()
    return tmp, _fit(tmp, log, items)


def _scores(tmp, run, support: pd.DataFrame, name: str) -> list[float]:
    """`metarec predict` of one cold user "n" on three items, ``support`` written as
    ``name`` (CSV or Parquet by its suffix); the scores, in query order."""
    s = tmp / name
    if name.endswith(".parquet"):
        support.to_parquet(s, index=False)
    else:
        support.to_csv(s, index=False)
    q = tmp / "Q.csv"
    pd.DataFrame({"user_id": ["n"] * 3, "item_id": ["it2", "it3", "it0"]}).to_csv(q, index=False)
    out = tmp / f"P_{name}.csv"
    args = ["--run", str(run), "--support", str(s), "--query", str(q), "--out", str(out)]
    assert main(["predict", *args]) == 0
    return pd.read_csv(out)["score"].tolist()


T0 = pd.Timestamp("2024-05-01 12:00:00")
# (newer, older, later) instants of one support: newer and older lie in the same second
FORMS = {
    "float_seconds.csv": (10.9, 10.1, 15.0),
    "iso_fraction.csv": (
        "2024-05-01T12:00:00.900",
        "2024-05-01T12:00:00.100",
        "2024-05-01T12:00:05",
    ),
    "datetime_ms.parquet": (
        T0 + pd.Timedelta(milliseconds=900),
        T0 + pd.Timedelta(milliseconds=100),
        T0 + pd.Timedelta(seconds=5),
    ),
}


@pytest.mark.parametrize("name", list(FORMS))
def test_a_fraction_of_a_second_is_said_and_a_time_sorted_file_keeps_the_newest_row(
    fitted, name, capsys
):
    """A support that rates it0 twice within one second, listed in time order (1 at .1 s,
    then 5 at .9 s), scores as the support holding only the newest row (it0 = 5); the
    fraction's loss is said, naming the file. Listed the other way round the file's order
    decides (the README's rule for ties), and the warning said nothing of why."""
    tmp, run = fitted
    newer, older, later = FORMS[name]
    only_newest = pd.DataFrame(
        {
            "user_id": ["n", "n"],
            "item_id": ["it0", "it1"],
            "rating": [5, 5],
            "timestamp": [newer, later],
        }
    )
    only_older = only_newest.assign(rating=[1, 5], timestamp=[older, later])
    both = pd.DataFrame(
        {
            "user_id": ["n"] * 3,
            "item_id": ["it0", "it0", "it1"],
            "rating": [1, 5, 5],
            "timestamp": [older, newer, later],
        }
    )
    want = _scores(tmp, run, only_newest, "new_" + name)
    other = _scores(tmp, run, only_older, "old_" + name)
    assert want != other  # the two ratings of it0 do move the scores
    capsys.readouterr()
    got = _scores(tmp, run, both, "both_" + name)
    err = capsys.readouterr().err
    assert "keeps its newest" in err
    assert f"both_{name}: column 'timestamp': 2 timestamps have a fraction of a second" in err
    assert "sort the file by time" in err
    assert got == pytest.approx(want, abs=1e-9)


def test_a_log_with_subsecond_timestamps_is_said_to_lose_the_fraction_at_fit(tmp_path, capsys):
    """Each user's rows 0.1 s apart within one second: fit says the fractions are
    dropped, naming T (shuffled, such a file fitted another model without a word)."""
    log, items = _world()
    k = log.groupby("user_id").cumcount().to_numpy()
    log = log.assign(timestamp=log["timestamp"] - k + k / 10)  # 1000*u + t/10
    assert log["timestamp"].is_unique
    capsys.readouterr()
    _fit(tmp_path, log, items, "A")
    err = capsys.readouterr().err
    n = int((k > 0).sum())
    assert f"A_T.csv: column 'timestamp': {n} timestamps have a fraction of a second" in err, err
