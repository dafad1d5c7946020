"""Side data of users who arrive after ``fit``.

``fit`` turns the users file (age, gender, occupation, ...) into one feature row per user
it lists, with vocabularies and scalings fitted on the users with training rows
(:func:`metarec.features.side_features`). A user who signs up later is not in that file.
:class:`UserFeatures` keeps what the fit learned about the columns, so such a user's own
row (``predict``/``recommend --users``, the server's ``user``) is encoded exactly as the
listed users' rows were, rather than scored as the featureless average user.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from metarec.features import SideEncoder, embed_texts
from metarec.text.templates import user_texts
from metarec.types import Dataset, IdMap, MetarecError, SideTable

if TYPE_CHECKING:
    from metarec.model import MetaRecommender

KEY = "user_features"  # the RUN's meta.json key


@functools.lru_cache(maxsize=2)
def _text_encoder(name: str):
    """The text encoder ``name``, loaded once per process: a server encoding each
    request's user text had loaded the sentence-transformer every time."""
    from metarec.text import make_encoder

    return make_encoder(name)


def _cell_text(v: object) -> object:
    """A side cell as the file readers spell it at fit: a list (Parquet) joined by "|", a
    whole number without its ".0" (a Parquet float column, JSON 2.0: "2.0" matched no
    fitted category "2"), a missing value None."""
    if isinstance(v, list | tuple | np.ndarray):
        return "|".join(str(_cell_text(x)) for x in v if _cell_text(x) is not None)
    if v is None or v is pd.NA or (isinstance(v, float | np.floating) and np.isnan(v)):
        return None
    if isinstance(v, float | np.floating) and np.isfinite(v) and float(v).is_integer():
        return str(int(v))
    return v if isinstance(v, str) else str(v)


@dataclass(frozen=True)
class UserFeatures:
    """``side``: the fitted encoder of the users file's side columns; ``text_dim``: the
    width of the user text vectors the model's user rows end with (0: no user text), from
    the encoder ``text_model`` whose fingerprint is ``fingerprint``."""

    side: SideEncoder
    text_dim: int = 0
    text_model: str = ""
    fingerprint: str = ""

    @classmethod
    def fit(
        cls, model: MetaRecommender, dataset: Dataset, fit_users: np.ndarray
    ) -> UserFeatures | None:
        """What encodes a new user as ``model``'s fitted rows were encoded, or None where
        the data has no users file, or the model's user rows were built another way
        (features passed to ``fit`` with other settings): new users' rows would then not
        be comparable, and the model scores them as the featureless cold user."""
        table = dataset.user_table
        feats = model.features_
        if table is None or feats is None:
            return None
        encoder = SideEncoder.fit(table, fit_users)
        side = encoder.apply(table.frame)  # (n_users, d_side)
        fitted = feats.user_side[: dataset.n_users].numpy()  # (n_users, d_side + d_text)
        d = side.shape[1]
        text_dim = fitted.shape[1] - d
        if text_dim < 0 or not np.array_equal(fitted[:, :d], side):
            return None
        if text_dim and not model.config.text.user_text:
            return None
        return cls(encoder, text_dim, model.config.text.model, feats.encoder_fingerprint)

    def frame(
        self, raw: pd.DataFrame, where: str = "users", ids: np.ndarray | None = None
    ) -> pd.DataFrame:
        """``raw``'s side columns (no ``user_id``) read by the roles the fitted users file
        gave them: numbers for a numeric column (a cell that is no number is an error,
        naming the user of ``ids``), text for the rest, spelled as the file readers spell
        them (a list is "a|b", a whole number 2.0 is "2"). A column the fitted file did
        not have is an error; one it had and ``raw`` lacks is missing on every row."""
        from metarec.data.tabular import MISSING_SPELLINGS, clip, number_cells

        kinds = dict(self.side.columns)
        unknown = [c for c in raw.columns if c != "user_id" and c not in kinds]
        if unknown:
            have = ", ".join(kinds) or "none"
            raise MetarecError(
                f"{where}: column {clip(unknown[0])!r} was not in the users file the RUN was "
                f"fitted with (its side columns: {have})"
            )
        out = {}
        for c, kind in self.side.columns:
            if c not in raw.columns:
                out[c] = pd.Series([np.nan if kind == "numeric" else pd.NA] * len(raw))
                continue
            s = raw[c].reset_index(drop=True)
            if (
                kind == "numeric"
                and pd.api.types.is_datetime64_any_dtype(s)
                and not self.side.timestamps_in_seconds
            ):
                # fitted when a timestamp column was its file's unit (us or ns), these
                # seconds would be clipped to the fitted range's edge without a word
                raise MetarecError(
                    f"{where}: column {c!r} holds timestamps, which the metarec that fitted "
                    "this RUN read in its file's time unit; fit the RUN again to use them"
                )
            if kind == "numeric":
                as_num, spelled, filled = number_cells(s)
                bad = filled & as_num.isna()
                if bad.any():
                    at = int(np.flatnonzero(bad.to_numpy())[0])
                    who = f" (user {clip(ids[at])!r})" if ids is not None else ""
                    raise MetarecError(
                        f"{where}: column {clip(c)!r} holds {clip(spelled[bad].iloc[0])!r}{who}, "
                        "not a number "
                        f"(the column is numeric in the users file the RUN was fitted with; "
                        f"blank the cell, or write one of {', '.join(sorted(MISSING_SPELLINGS))}, "
                        "for a missing value)"
                    )
                out[c] = pd.Series(as_num.where(filled).to_numpy(np.float64))
            elif kind == "text":
                out[c] = s.map(_cell_text).fillna("").astype(str)
            else:
                out[c] = s.map(_cell_text).astype("string")
        return pd.DataFrame(out, index=pd.RangeIndex(len(raw)))

    def encode(self, frame: pd.DataFrame, cache=None) -> np.ndarray:
        """(len(frame), d_user) float32 feature rows of users given by their side columns
        (:meth:`frame`'s output), their text embedded where the model embeds user text."""
        side = self.side.apply(frame)
        if not self.text_dim:
            return side
        kinds = dict(self.side.columns)
        table = SideTable(
            IdMap(np.array([str(i) for i in range(len(frame))], dtype=object)),
            frame,
            tuple(c for c in frame.columns if kinds.get(c) == "text"),
            tuple(c for c in frame.columns if kinds.get(c) == "categorical"),
            tuple(c for c in frame.columns if kinds.get(c) == "numeric"),
        )
        texts = user_texts(table, None)
        if texts is None:  # nothing to render: the zero text vector, as a textless user
            return np.concatenate([side, np.zeros((len(frame), self.text_dim), np.float32)], 1)
        encoder = _text_encoder(self.text_model)
        if encoder.fingerprint != self.fingerprint:
            raise MetarecError(
                f"new users' text: the text encoder {self.text_model!r} here is not the one "
                f"the RUN was fitted with ({encoder.fingerprint.split('|')[0]} vs "
                f"{self.fingerprint.split('|')[0]})"
            )
        vecs, _ = embed_texts(texts, encoder, cache)
        if vecs.shape[1] != self.text_dim:
            raise MetarecError(
                f"new users' text: {vecs.shape[1]}-wide vectors, the RUN's are {self.text_dim}"
            )
        return np.concatenate([side, vecs.astype(np.float32)], 1)

    def to_json(self) -> dict:
        return {
            "side": self.side.to_json(),
            "text_dim": self.text_dim,
            "text_model": self.text_model,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, doc: object) -> UserFeatures:
        if not isinstance(doc, dict) or "side" not in doc:
            raise MetarecError(f"meta.json {KEY}: not an object with a 'side' encoder")
        try:
            return cls(
                SideEncoder.from_json(doc["side"]),
                int(doc.get("text_dim", 0)),
                str(doc.get("text_model", "")),
                str(doc.get("fingerprint", "")),
            )
        except (TypeError, ValueError) as err:
            raise MetarecError(f"meta.json {KEY}: unreadable ({err})") from None
