"""Templates, side features, build_features (PCA fit on training items), history_profile."""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metarec.features import (
    TextProjection,
    build_features,
    embed_dataset,
    history_profile,
    numeric_features,
    side_features,
)
from metarec.text.templates import clean_text, default_item_template, item_texts, render, user_texts
from metarec.types import MetarecError, SideTable

# -- templates -------------------------------------------------------------------------


def test_render_fills_missing_values_as_empty_and_cleans():
    frame = pd.DataFrame(
        {
            "title": ["Toy Story", "Heat", None],
            "year": [1995.0, np.nan, 1942.0],
            "genres": ["Animation|Comedy", None, "Drama"],
        }
    )
    assert render(frame, "{title} ({year}) — {genres}") == [
        "Toy Story (1995) — Animation, Comedy",
        "Heat",
        "(1942) — Drama",
    ]


def test_clean_text_known_cases():
    assert clean_text("A () —  — B, ") == "A — B"
    assert clean_text(" — x") == "x"
    assert clean_text("a, , b") == "a, b"
    assert clean_text("Spider-Man: Homecoming") == "Spider-Man: Homecoming"


def test_cells_reach_the_encoder_as_written():
    # the cleaning ran over the cells too: "-273.15" lost its sign, "Episode IV -- A New
    # Hope" became "Episode IV- A New Hope", a title "()" became no text at all
    cells = ["Temp: -5 C", "-273.15", "Episode IV -- A New Hope", "x :-) y", "— intro —", "()"]
    frame = pd.DataFrame({"title": cells, "year": [1995.0] + [np.nan] * 5})
    assert render(frame, "{title}") == cells
    assert render(frame, "{title} ({year}) — ")[:2] == ["Temp: -5 C (1995)", "-273.15"]
    # whitespace runs are still one space, in the template and the cells alike
    assert render(pd.DataFrame({"t": ["a \n\t b"]}), "[{t}]  ok") == ["[a b] ok"]


def test_the_csv_loader_refuses_an_item_named_twice_as_fit_does(tmp_path):
    # split and info took it (the later row's text silently won); fit refused it
    from metarec.data.tabular import read_table

    (tmp_path / "I.csv").write_text("item_id,title\ni1,one\n i2,two\ni2,again\n")
    (tmp_path / "T.csv").write_text("user_id,item_id,rating\nu,i1,5\nu,i2,3\n")
    with pytest.raises(
        MetarecError, match=r"I.csv: item_id 'i2' appears twice \(line 3 and line 4"
    ):
        read_table(tmp_path / "T.csv", items=tmp_path / "I.csv", text_cols=["title"])


def test_any_column_name_can_be_a_text_column(tmp_path):
    # the generic template pasted names into a str.format string: "desc.long" and
    # "notes[0]" raised KeyError ('desc'), "a:b" and "1" were "bad text template" errors
    from metarec.data.raw import build_dataset
    from metarec.data.tabular import read_table

    names = ["desc.long", "notes[0]", "a:b", "1", "x}y"]
    items = pd.DataFrame({"item_id": ["i1", "i2"], **{n: [f"{n} one", f"{n} two"] for n in names}})
    items.to_csv(tmp_path / "I.csv", index=False)
    (tmp_path / "T.csv").write_text("user_id,item_id,rating\nu,i1,5\nu,i2,3\n")
    raw = read_table(tmp_path / "T.csv", items=tmp_path / "I.csv", text_cols=names)
    ds = build_dataset(raw)
    texts = item_texts(ds.name, ds.item_table, ds.n_items)
    assert texts[ds.items.index("i1")] == " — ".join(f"{n} one" for n in names)
    # a template names such a column verbatim, without format's attribute access
    assert render(items, "{desc.long} / {notes[0]}") == [
        "desc.long one / notes[0] one",
        "desc.long two / notes[0] two",
    ]


def test_bad_templates_raise_one_line_errors():
    frame = pd.DataFrame({"title": ["x"]})
    with pytest.raises(MetarecError, match="column\\(s\\) year not in the table"):
        render(frame, "{title} ({year})")
    with pytest.raises(MetarecError, match="named fields"):
        render(frame, "{0}")
    with pytest.raises(MetarecError, match="format specs"):
        render(frame, "{title:>10}")


def test_item_texts_default_and_dataset_templates(tiny_dataset):
    t = item_texts(tiny_dataset.name, tiny_dataset.item_table, tiny_dataset.n_items)
    # generic default: all text columns joined; item 4 has none -> ""
    assert t == [
        "Toy Story (1995) — Animation, Comedy",
        "Heat (1995) — Action, Crime",
        "Casablanca (1942) — Drama, Romance",
        "Babe (1995) — Comedy",
        "",
    ]
    assert item_texts("tiny", tiny_dataset.item_table, 5, "{title}")[2] == "Casablanca (1942)"
    assert item_texts("tiny", None, 3) == ["", "", ""]


def test_family_template_needs_its_columns():
    frame = pd.DataFrame({"name": ["Nirvana"], "tags": ["grunge|rock"], "x": ["y"]})
    table = SideTable(_ids(1), frame, text_columns=("name", "x"))
    assert default_item_template("lastfm-hetrec", table) == "{name} — {tags}"
    # without "tags" the lastfm family falls back to its next candidate
    table2 = SideTable(_ids(1), frame[["name", "x"]], text_columns=("name", "x"))
    assert default_item_template("lastfm-hetrec", table2) == "{name}"
    # no family template: None, and the text columns are joined (generic_parts)
    assert default_item_template("my-data", table2) is None
    assert item_texts("my-data", table2, 1) == ["Nirvana — y"]
    # a user's own file named like a family ("lastfm_log.csv": the csv loader names the
    # dataset after it) gets the generic join, as `metarec fit` builds it: a prefix match
    # had applied the family template there, dropping the file's other text columns
    for name in ("lastfm_log", "lastfm", "LASTFM-HETREC", "movielens-mine"):
        assert default_item_template(name, table) is None, name
        assert item_texts(name, table, 1) == ["Nirvana — y"], name


def _ids(n):
    from metarec.types import IdMap

    return IdMap(np.array([str(i) for i in range(n)], dtype=object))


def test_user_texts_from_demographics(tiny_dataset):
    assert user_texts(tiny_dataset.user_table) == [
        "age 24, male, technician",
        "age 53, female, other",
        "age 23, male, writer",
        "",  # u3 rated but has no demographics row
    ]
    assert user_texts(None) is None
    no_demo = SideTable(_ids(2), pd.DataFrame({"zip": ["1", "2"]}), categorical_columns=("zip",))
    assert user_texts(no_demo) is None


# -- side features -----------------------------------------------------------------------


def test_side_features_multi_hot_and_z_scores(tiny_dataset):
    x, names = side_features(tiny_dataset.item_table, 5)
    # genres ("|" values) become a multi-hot: Comedy (2 items) first, then by name
    assert names == [
        "lang=en",
        "lang=fr",
        "genres=Comedy",
        "genres=Action",
        "genres=Animation",
        "genres=Crime",
        "genres=Drama",
        "genres=Romance",
        "year",
    ]
    genres = x[:, 2:8]
    np.testing.assert_array_equal(
        genres,
        [
            [1, 0, 1, 0, 0, 0],
            [0, 1, 0, 1, 0, 0],
            [0, 0, 0, 0, 1, 1],
            [1, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ],
    )
    # years 1995, 1995, 1942, 1995: mean 1981.75, population std 22.95 -> z = 1/sqrt(3), -sqrt(3)
    s3 = np.sqrt(3.0)
    np.testing.assert_allclose(x[:, 8], [1 / s3, 1 / s3, -s3, 1 / s3, 0.0], rtol=1e-6)


def test_a_stray_pipe_in_free_text_does_not_make_a_multi_hot():
    # one title with "|" made the title column 64 one-hot columns of single titles
    titles = [f"book number {i}" for i in range(99)] + ["The Hunger Games | Catching Fire"]
    table = SideTable(_ids(100), pd.DataFrame({"title": titles}), text_columns=("title",))
    x, names = side_features(table, 100)
    assert x.shape == (100, 0) and names == []
    # a genre-like column stays a multi-hot: "|" in few cells, but few distinct tokens
    genres = ["Drama"] * 95 + ["Drama|Comedy"] * 5
    table = SideTable(_ids(100), pd.DataFrame({"g": genres}), text_columns=("g",))
    assert side_features(table, 100)[1] == ["g=Drama", "g=Comedy"]


def test_side_features_statistics_come_from_fit_rows_only(tiny_dataset):
    x, names = side_features(tiny_dataset.item_table, 5, fit_rows=np.array([0, 1]))
    # vocabularies from items 0 and 1 only: no Drama/Romance columns, no "fr"
    assert names == [
        "lang=en",
        "genres=Action",
        "genres=Animation",
        "genres=Comedy",
        "genres=Crime",
        "year",
    ]
    # year mean 1995 and std 0 on fit rows -> scale 1, range [1995, 1995]: 1942 would map to
    # -53 and is clipped to the fit range instead
    np.testing.assert_allclose(x[:, -1], [0, 0, 0, 0, 0])


def test_side_features_clip_numerics_to_the_fit_range():
    """Values outside the fit rows' range (a newer year than any training item's) are
    clipped to its ends: a linear layer would extrapolate them without bound."""
    import pandas as pd

    from metarec.types import IdMap, SideTable

    frame = pd.DataFrame({"year": [0.0, 10.0, 20.0, 30.0, -10.0, np.nan]})
    table = SideTable(IdMap.from_values(range(6)), frame, numeric_columns=("year",))
    x, names = side_features(table, 6, fit_rows=np.array([0, 1, 2]))
    sd = np.std([0.0, 10.0, 20.0])
    want = np.array([-10, 0, 10, 10, -10, 0]) / sd  # 30 -> 20 and -10 -> 0, NaN -> mean
    assert names == ["year"]
    np.testing.assert_allclose(x[:, 0], want, rtol=1e-6)
    # numeric_features: the same columns alone (what the blend's "side" inputs read)
    v, v_names = numeric_features(table, 6, fit_rows=np.array([0, 1, 2]))
    assert v_names == ["year"]
    np.testing.assert_array_equal(v, x)
    assert numeric_features(None, 6)[0].shape == (6, 0)
    # a column no fit row fills is 0 for every row: a held-out row's raw value had passed
    # unscaled (an age of 30 as z = +5), an input the model never met (probe 170)
    frame = pd.DataFrame({"age": [np.nan, np.nan, np.nan, 30.0, 60.0, np.nan]})
    table = SideTable(IdMap.from_values(range(6)), frame, numeric_columns=("age",))
    v, _ = numeric_features(table, 6, fit_rows=np.array([0, 1, 2]))
    np.testing.assert_array_equal(v, np.zeros((6, 1), dtype=np.float32))


def test_numeric_features_clip_a_heavy_tail_at_max_z():
    """A far outlier inside the fit range (an ancient book among modern ones) is clipped to
    -MAX_Z standard deviations: unclipped (z = -17 on goodbooks) it made MAML diverge."""
    import pandas as pd

    from metarec.features import MAX_Z
    from metarec.types import IdMap, SideTable

    years = np.r_[np.linspace(1990.0, 2010.0, 99), -750.0]
    table = SideTable(
        IdMap.from_values(range(100)), pd.DataFrame({"year": years}), numeric_columns=("year",)
    )
    v, _ = numeric_features(table, 100)
    z = (years - years.mean()) / years.std()
    assert z[-1] < -MAX_Z  # the outlier, well past the clip
    np.testing.assert_allclose(v[-1, 0], -MAX_Z)
    np.testing.assert_allclose(v[:-1, 0], z[:-1], rtol=1e-5)  # the rest as they were
    assert MAX_Z == 5.0


def test_count_columns_go_on_a_log_scale_and_many_columns_share_one_scale():
    """goodbooks' books.csv has ten correlated, heavy-tailed count columns: z-scored raw,
    the blockbusters sat at +5 in all of them at once and a fit diverged at step 1."""
    import pandas as pd

    from metarec.types import IdMap, SideTable

    rng = np.random.default_rng(0)
    counts = np.round(rng.pareto(1.2, 500) * 100)  # skew far over 2, non-negative
    year = rng.normal(2000, 10, 500)  # not a count: as it was
    frame = pd.DataFrame({"ratings_count": counts, "year": year})
    ids = IdMap.from_values(range(500))
    v, names = numeric_features(
        SideTable(ids, frame, numeric_columns=("ratings_count", "year")), 500
    )
    assert names == ["ratings_count", "year"]
    logc = np.log1p(counts)
    want = (logc - logc.mean()) / logc.std() / np.sqrt(2)
    np.testing.assert_allclose(v[:, 0], np.clip(want, -5 / np.sqrt(2), 5 / np.sqrt(2)), rtol=1e-4)
    one, _ = numeric_features(SideTable(ids, frame[["year"]], numeric_columns=("year",)), 500)
    np.testing.assert_allclose(v[:, 1], one[:, 0] / np.sqrt(2), rtol=1e-5)
    np.testing.assert_allclose(one[:, 0], (year - year.mean()) / year.std(), rtol=1e-4)


def test_numeric_features_read_inf_as_missing_and_survive_extreme_magnitudes():
    """One inf cell made the column's mean and std NaN and zeroed every item; values near
    1e200 overflowed the variance (and 1e-300 underflowed it), so the column silently
    became a constant. Both are now z-scored like any other column."""
    from metarec.types import IdMap, SideTable

    base = np.array([1.0, 2.0, 3.0, 4.0])
    cols = {
        "with_inf": np.r_[base, np.inf],
        "huge": np.r_[base, 2.5] * 1e200,
        "tiny": np.r_[base, 2.5] * 1e-300,
    }
    table = SideTable(IdMap.from_values(range(5)), pd.DataFrame(cols), numeric_columns=tuple(cols))
    v, _ = numeric_features(table, 5)
    v = v * np.sqrt(3)  # three columns share one unit of scale
    z = (base - base.mean()) / base.std()
    np.testing.assert_allclose(v[:4, 0], z, rtol=1e-5)
    assert v[4, 0] == 0.0  # the inf cell: missing -> the mean
    ref = np.r_[base, 2.5]
    for j in (1, 2):
        np.testing.assert_allclose(v[:, j], (ref - ref.mean()) / ref.std(), rtol=1e-5)


# -- build_features -----------------------------------------------------------------------


def test_build_features_text_rows_side_and_users(tiny_dataset, hashing_encoder, tmp_path):
    fs = build_features(tiny_dataset, hashing_encoder, cache=tmp_path, user_text=True)
    texts = item_texts("tiny", tiny_dataset.item_table, 5)
    assert fs.item_text.dtype == torch.float32 and fs.item_text.shape == (5, 64)
    np.testing.assert_array_equal(fs.item_text[:4].numpy(), hashing_encoder.encode(texts[:4]))
    assert not fs.item_text[4].any()  # no text -> zero row
    assert fs.item_side.shape == (5, 9)
    # users: gender (2) + occupation (3) one-hots, age z-score, then 64-d user text vector
    assert fs.user_side.shape == (4, 2 + 3 + 1 + 64)
    np.testing.assert_array_equal(fs.user_side[0, :5].numpy(), [1, 0, 0, 1, 0])  # M, technician
    u_text = hashing_encoder.encode(["age 24, male, technician"])[0]
    np.testing.assert_array_equal(fs.user_side[0, 6:].numpy(), u_text)
    assert not fs.user_side[3].any()  # u3: nothing known
    assert fs.encoder_fingerprint == hashing_encoder.fingerprint


def test_text_projection_known_answer():
    # points on a line along (1, 1): one principal axis (1, 1)/sqrt(2), variance 2
    x = np.array([[-1, -1], [0, 0], [1, 1]], dtype=np.float32)
    p = TextProjection.fit(x, dim=1)
    np.testing.assert_allclose(p.apply(x)[:, 0], [-np.sqrt(2), 0, np.sqrt(2)], rtol=1e-6)
    # whitened: the axis at the mean variance (2, itself) after a ridge of 1% of it
    w = TextProjection.fit(x, dim=1, whiten=True)
    scale = np.sqrt(2 / 2.02)
    np.testing.assert_allclose(
        w.apply(x)[:, 0], [-np.sqrt(2) * scale, 0, np.sqrt(2) * scale], rtol=1e-5
    )
    # two axes of variance 4 and 1 both come out at ~2.5 (the mean), the total kept
    y = np.array([[-2, 0], [2, 0], [0, -1], [0, 1]], dtype=np.float32) * np.sqrt(1.5)
    v = np.var(TextProjection.fit(y, dim=2, whiten=True).apply(y), axis=0, ddof=1)
    np.testing.assert_allclose(v, [2.5 * 4 / 4.025, 2.5 * 1 / 1.025], rtol=1e-4)
    with pytest.raises(MetarecError, match="at most 2"):
        TextProjection.fit(x, dim=3)


def test_text_projection_axes_have_a_fixed_sign_whatever_the_row_order():
    # mutation audit, probe 147: dropping the sign fix survived (LAPACK's SVD signs are
    # arbitrary); the same items listed in another order must give the same features, and
    # each axis is signed so its largest |loading| is positive
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 10)) @ rng.normal(size=(10, 10))
    p = TextProjection.fit(x, dim=4)
    q = TextProjection.fit(x[::-1].copy(), dim=4)
    np.testing.assert_allclose(q.components, p.components, atol=1e-5)
    np.testing.assert_allclose(q.apply(x), p.apply(x), atol=1e-4)
    pivot = p.components[np.abs(p.components).argmax(0), np.arange(4)]
    assert (pivot > 0).all(), pivot


def test_text_projection_is_the_same_on_any_number_of_blas_threads():
    # a multi-threaded BLAS product sums in another order: the features moved in their
    # last bits with the core count, and training amplified it (quickstart nDCG@10 0.1270
    # on one thread, 0.1211 on two). Fit and apply run on one BLAS thread, so they equal
    # the one-thread product bit for bit whatever the process allows.
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 384)).astype(np.float32)
    with threadpool_limits(4, user_api="blas"):
        p = TextProjection.fit(x, dim=64)
        got = p.apply(x)
    with threadpool_limits(1, user_api="blas"):
        want = ((x - p.mean) @ p.components).astype(np.float32)
        again = TextProjection.fit(x, dim=64)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(p.components, again.components)


def test_pca_is_fitted_on_training_items_only(tiny_dataset, hashing_encoder):
    fit = np.array([0, 1, 3])  # item 2 is "cold"
    fs = build_features(tiny_dataset, hashing_encoder, pca_dim=2, whiten=True, fit_items=fit)
    z = fs.item_text.numpy()
    assert z.shape == (5, 2)
    # whitened over the 3 fit rows: mean 0, covariance (ddof 1) diagonal and equal
    # (their mean variance, less the 1% ridge)
    np.testing.assert_allclose(z[fit].mean(0), 0, atol=1e-5)
    cov = np.cov(z[fit].T)
    np.testing.assert_allclose(cov, np.eye(2) * cov[0, 0], atol=2e-2 * cov[0, 0])
    assert not z[4].any()
    # changing the cold item's text changes its own row only
    frame = tiny_dataset.item_table.frame.copy()
    frame.loc[2, "title"] = "Something else entirely"
    other = replace(tiny_dataset, item_table=replace(tiny_dataset.item_table, frame=frame))
    z2 = build_features(other, hashing_encoder, pca_dim=2, whiten=True, fit_items=fit).item_text
    np.testing.assert_array_equal(z2.numpy()[fit], z[fit])
    assert not np.allclose(z2.numpy()[2], z[2])


def test_user_side_statistics_are_fitted_on_training_users_only(tiny_dataset, hashing_encoder):
    """fit_users: the test users' profiles moved every user's z-scores, and so training
    (probe 153: the 189 test users' ages set to 99 changed the training curve). A user
    outside fit_users changes their own row only; None fits on every user."""
    u2 = tiny_dataset.users.index("u2")
    fit = np.array([tiny_dataset.users.index(u) for u in ("u0", "u1")])
    fs = build_features(tiny_dataset, hashing_encoder, fit_users=fit)
    frame = tiny_dataset.user_table.frame.copy()
    frame.loc[u2, "age"] = 99.0
    frame.loc[u2, "occupation"] = "astronaut"
    other = replace(tiny_dataset, user_table=replace(tiny_dataset.user_table, frame=frame))
    fs2 = build_features(other, hashing_encoder, fit_users=fit)
    np.testing.assert_array_equal(fs2.user_side.numpy()[fit], fs.user_side.numpy()[fit])
    assert not np.array_equal(fs2.user_side.numpy()[u2], fs.user_side.numpy()[u2])
    # fitted on every user, u2's new age moves the others' rows
    all_a = build_features(tiny_dataset, hashing_encoder).user_side.numpy()
    all_b = build_features(other, hashing_encoder).user_side.numpy()
    assert not np.array_equal(all_a[fit], all_b[fit])
    mask = np.zeros(tiny_dataset.n_users, dtype=bool)
    mask[fit] = True
    by_mask = build_features(tiny_dataset, hashing_encoder, fit_users=mask).user_side
    np.testing.assert_array_equal(by_mask.numpy(), fs.user_side.numpy())
    with pytest.raises(MetarecError, match="fit_users holds user indices outside"):
        build_features(tiny_dataset, hashing_encoder, fit_users=[0, 9])


def test_bad_fit_items(tiny_dataset, hashing_encoder):
    with pytest.raises(MetarecError, match="outside 0..4"):
        build_features(tiny_dataset, hashing_encoder, pca_dim=2, fit_items=[0, 9])


def test_embed_dataset_counts_and_warm_run(tiny_dataset, hashing_encoder, tmp_path):
    cold = embed_dataset(tiny_dataset, hashing_encoder, tmp_path, show_progress=False)
    assert (cold["items_with_text"], cold["users_with_text"]) == (4, 3)
    assert (cold["hits"], cold["misses"], cold["dim"]) == (0, 7, 64)
    warm = embed_dataset(tiny_dataset, "hashing:64", tmp_path, show_progress=False)
    assert (warm["hits"], warm["misses"], warm["encoded"]) == (7, 0, 0)


# -- history_profile -------------------------------------------------------------------------


def test_history_profile_weighted_mean_padding_and_empty():
    item_text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    support = torch.tensor([[0, 2, 1], [1, 0, 0], [0, 0, 0]])
    weights = torch.tensor([[1.0, 3.0, 5.0], [2.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    p = history_profile(item_text, support, weights, mask)
    # row 0: (1*[1,0] + 3*[2,2]) / 4; row 1: the single item; row 2: empty support -> zeros
    expected = torch.tensor([[7 / 4, 6 / 4], [0.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(p, expected)
    # unweighted mean = weights of one; K = 0 gives zeros, not NaN
    ones = torch.ones(1, 2)
    torch.testing.assert_close(
        history_profile(item_text, torch.tensor([[0, 1]]), ones, ones), torch.tensor([[0.5, 0.5]])
    )
    empty = history_profile(
        item_text, torch.zeros(2, 0, dtype=torch.long), *[torch.zeros(2, 0)] * 2
    )
    torch.testing.assert_close(empty, torch.zeros(2, 2))


# -- real data -----------------------------------------------------------------------------


@pytest.mark.data
def test_movielens_100k_features():
    root = os.environ.get("METAREC_DATA_DIR")
    if not root:
        pytest.skip("METAREC_DATA_DIR is not set")
    if not (Path(root) / "ml-100k").is_dir():
        pytest.skip(f"ml-100k/ is not under METAREC_DATA_DIR={root}")
    from metarec.data import load_dataset
    from metarec.text.encoder import HashingEncoder

    ds = load_dataset("movielens-100k", os.path.join(root, "ml-100k"))
    texts = item_texts(ds.name, ds.item_table, ds.n_items)
    assert texts[0] == "Toy Story (1995) — Animation, Children's, Comedy"
    fs = build_features(ds, HashingEncoder(32), fit_items=np.arange(1000), pca_dim=16)
    assert fs.item_text.shape == (1682, 16)
    assert fs.item_side.shape == (1682, 19 + 1)  # 19 genres multi-hot + scaled year
    u1 = ds.users.ids.tolist().index("1")  # users are indexed by first rating, not file order
    assert user_texts(ds.user_table)[u1] == "age 24, male, technician"


def test_autoencoder_reduction_is_fitted_on_training_items_only(tiny_dataset, hashing_encoder):
    # text.reduce = "autoencoder": the optional encoder/decoder head as the reduction
    fit = np.array([0, 1, 3])
    args = dict(pca_dim=2, fit_items=fit, reduce="autoencoder")
    a = build_features(tiny_dataset, hashing_encoder, **args).item_text.numpy()
    assert a.shape == (5, 2) and np.isfinite(a).all() and not a[4].any()  # no text: zero
    np.testing.assert_allclose(a[fit].mean(0), 0, atol=1e-5)
    # the PCA's scale over the fit rows, so the default learning rates still fit
    pca = build_features(tiny_dataset, hashing_encoder, pca_dim=2, fit_items=fit).item_text
    np.testing.assert_allclose(a[fit].var(0).sum(), pca.numpy()[fit].var(0).sum(), rtol=1e-4)
    # seeded, and a cold item's text moves its own row only
    again = build_features(tiny_dataset, hashing_encoder, **args).item_text.numpy()
    np.testing.assert_array_equal(again, a)
    frame = tiny_dataset.item_table.frame.copy()
    frame.loc[2, "title"] = "Something else entirely"
    other = replace(tiny_dataset, item_table=replace(tiny_dataset.item_table, frame=frame))
    b = build_features(other, hashing_encoder, **args).item_text.numpy()
    np.testing.assert_array_equal(b[fit], a[fit])
    assert not np.allclose(b[2], a[2])


def test_text_reduce_is_checked_with_the_config():
    from metarec.model import TextConfig

    with pytest.raises(MetarecError, match="text.reduce: 'svd' is not one of"):
        TextConfig(reduce="svd")
    with pytest.raises(MetarecError, match="needs text.pca_dim"):
        TextConfig(reduce="autoencoder", pca_dim=None)
    with pytest.raises(MetarecError, match="no text.whiten"):
        TextConfig(reduce="autoencoder", whiten=True)


@pytest.mark.parametrize(
    "kwargs, said",
    [
        ({"reduce": "zz"}, "reduce 'zz' is not one of"),
        ({"pca_dim": 2.5}, "pca_dim must be an integer >= 1 or None, got 2.5"),
        ({"pca_dim": 0}, "pca_dim must be an integer >= 1 or None, got 0"),
        ({"reduce": "autoencoder"}, "reduce='autoencoder' needs pca_dim"),
    ],
)
def test_build_features_checks_its_arguments_as_text_config_does(
    tiny_dataset, hashing_encoder, kwargs, said
):
    # called directly, an unknown reduce gave a PCA and pca_dim=2.5 two components
    with pytest.raises(MetarecError) as err:
        build_features(tiny_dataset, hashing_encoder, **kwargs)
    assert said in str(err.value)
    with pytest.raises(MetarecError, match="expected a Dataset, got str"):
        build_features("tiny", hashing_encoder)


def test_a_column_is_multi_valued_by_its_training_rows_only():
    # held-out items alone, writing "a | b", made a blurb column multi-valued, and the
    # training items then got one-hot flags of their own single blurbs (29 columns)
    from metarec.features import side_features

    blurbs = [f"blurb number {i} with words {7 * i}" for i in range(40)]
    piped = blurbs[:30] + [f"blurb number {i} | part two {i}" for i in range(30, 40)]
    fit = np.arange(30)
    widths = []
    for column in (blurbs, piped):
        from metarec.types import IdMap

        ids = IdMap(np.array([f"i{i}" for i in range(40)], dtype=object))
        table = SideTable(ids, pd.DataFrame({"blurb": column}), text_columns=("blurb",))
        widths.append(side_features(table, 40, fit)[0].shape[1])
    assert widths == [0, 0]


def test_one_text_for_every_training_item_is_warned_about(tiny_dataset, hashing_encoder):
    """A template with no {field} gave every item the same text: the PCA-centred text
    features were all exactly zero, and only the PCA size was warned about."""
    with pytest.warns(
        UserWarning,
        match=r"every training item with text has the same text \(.plain text.\).*names no column",
    ):
        fs = build_features(tiny_dataset, hashing_encoder, pca_dim=2, text_template="plain text")
    assert float(fs.item_text.abs().max()) == 0.0  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_features(tiny_dataset, hashing_encoder, pca_dim=2, text_template="{title}")


def test_distinct_texts_the_encoder_merges_are_warned_about(tiny_dataset, hashing_encoder):
    """An encoder reads a bounded prefix: 40 books with one long blurb before their titles
    got 40 equal MiniLM vectors, all zero after the PCA, and nothing said so (probe 120).
    Here an encoder that reads the first 12 characters stands in for MiniLM's 256 pieces."""
    from metarec.text import HashingEncoder

    class Prefix(HashingEncoder):
        @property
        def fingerprint(self) -> str:
            return "prefix-12|" + super().fingerprint

        def encode(self, texts, batch_size=None, show_progress=False):
            return super().encode([t[:12] for t in texts], batch_size, show_progress)

    template = "a long shared blurb first, then {title}"
    with pytest.warns(
        UserWarning,
        match=r"text: \d+ of \d+ distinct training item texts got the same vector as another \(prefix-12\)",
    ):
        build_features(tiny_dataset, Prefix(dim=16), text_template=template)
    # the whole text read: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_features(tiny_dataset, hashing_encoder, text_template=template)
