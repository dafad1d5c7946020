"""Feature vectors for users and items: the model's view of φ(u, c)'s inputs.

A :class:`FeatureSet` holds per-item and per-user matrices built once per dataset (text
vectors from the pretrained encoder, side features). The per-task part of a user's
representation, the history profile, is computed from the support set by
:func:`history_profile`, so a cold user with K interactions has a content profile.

Builders: :func:`build_features` (Dataset + text encoder -> FeatureSet, optional PCA /
whitening fitted on training items only), :func:`side_features` (one-/multi-hots and
z-scores of a side table) and :func:`embed_dataset` (what ``metarec embed`` runs).
"""

from __future__ import annotations

import dataclasses
import numbers
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from metarec.text.cache import EmbeddingCache
from metarec.text.encoder import TextEncoder, make_encoder
from metarec.text.templates import item_texts, user_texts
from metarec.types import Dataset, MetarecError, SideTable

TEXT_REDUCERS = ("pca", "autoencoder")  # build_features(reduce=...), TextConfig.reduce


@dataclass(frozen=True, eq=False)
class FeatureSet:
    item_text: torch.Tensor  # (n_items, d_text) float32; zero rows for items without text
    item_side: torch.Tensor  # (n_items, d_item_side) float32; may have 0 columns
    user_side: torch.Tensor  # (n_users, d_user_side) float32; may have 0 columns
    encoder_fingerprint: str = ""

    def __post_init__(self) -> None:
        # a FeatureSet built by hand (numpy arrays, float64 from a notebook) is made the
        # (n, d) float32 tensors the scorer multiplies by its float32 weights: float64 had
        # failed deep in torch ("Input dtypes must be the same"), numpy in torch.zeros
        for name in ("item_text", "item_side", "user_side"):
            value = getattr(self, name)
            try:
                t = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError) as e:
                raise MetarecError(f"FeatureSet.{name}: not a numeric array ({e})") from None
            if t.dim() != 2:
                raise MetarecError(
                    f"FeatureSet.{name}: expected a 2-D (rows, columns) array, got shape "
                    f"{tuple(t.shape)}"
                )
            if t.dtype == torch.bool or t.is_complex():
                raise MetarecError(f"FeatureSet.{name}: expected real numbers, got {t.dtype}")
            if t.dtype != torch.float32:
                t = t.to(torch.float32)
            if t is not value:
                object.__setattr__(self, name, t)
        if self.item_side.shape[0] != self.item_text.shape[0]:
            raise MetarecError(
                f"FeatureSet: item_text has {self.item_text.shape[0]} rows but item_side "
                f"{self.item_side.shape[0]} (one row per item in both)"
            )

    @property
    def n_items(self) -> int:
        return self.item_text.shape[0]

    @property
    def n_users(self) -> int:
        return self.user_side.shape[0]

    def to(self, device: torch.device | str) -> FeatureSet:
        return FeatureSet(
            self.item_text.to(device),
            self.item_side.to(device),
            self.user_side.to(device),
            self.encoder_fingerprint,
        )


def history_profile(
    item_text: torch.Tensor,
    support_items: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Weighted mean of the text vectors of each task's support items.

    item_text: (n_items, d); support_items: (..., K) int64; weights, mask: (..., K) float.
    Returns (..., d). Padded slots (mask 0) and empty supports contribute nothing (the
    profile of an empty support is the zero vector, not NaN).
    """
    w = weights * mask  # (..., K)
    vecs = item_text[support_items]  # (..., K, d)
    denom = w.sum(-1, keepdim=True).clamp_min(1e-8)  # (..., 1)
    return (w.unsqueeze(-1) * vecs).sum(-2) / denom


# ---------------------------------------------------------------------------------------
# Builders: Dataset (+ encoder) -> FeatureSet
# ---------------------------------------------------------------------------------------


def embed_texts(
    texts: list[str],
    encoder: TextEncoder,
    cache: EmbeddingCache | None = None,
    batch_size: int | None = None,
    show_progress: bool = False,
) -> tuple[np.ndarray, dict]:
    """(len(texts), dim) float32 vectors; empty texts get zero rows and are not encoded.

    stats: hits/misses (cache; both 0 without one), encoded, n_text (non-empty texts).
    """
    texts = [str(t) for t in texts]
    rows = [i for i, t in enumerate(texts) if t]
    stats = {"hits": 0, "misses": 0, "encoded": 0, "n_text": len(rows)}
    if not rows:
        return np.zeros((len(texts), encoder.dim), dtype=np.float32), stats
    todo = [texts[i] for i in rows]
    if cache is not None:
        vecs, cstats = cache.get_or_compute(encoder, todo, batch_size, show_progress)
        stats.update(hits=cstats["hits"], misses=cstats["misses"], encoded=cstats["encoded"])
        # what the cache repaired or failed to keep: `metarec embed` reports it (a
        # damaged shard's silent full re-encode looked like a cold start)
        for key in ("dropped_shards", "index_rebuilt", "stored"):
            if key in cstats:
                stats[key] = cstats[key]
    else:
        vecs = np.asarray(encoder.encode(todo, batch_size=batch_size, show_progress=show_progress))
        stats["encoded"] = len(todo)
    out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
    out[rows] = vecs
    return out, stats


@dataclass(frozen=True, eq=False)
class TextProjection:
    """Centre + PCA (+ whitening) of text vectors: ``(x - mean) @ components``.

    mean: (d,); components: (d, k). Fitted on training items only, applied to all items.
    Whitening equalises the axes at their mean variance v̄ (a ridge of 0.01·v̄ added to
    each axis's variance first), so it reshapes the text vectors without changing their
    overall scale.
    """

    mean: np.ndarray
    components: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, dim: int | None = None, whiten: bool = False) -> TextProjection:
        """x: (n, d) fit rows. dim None keeps min(n - 1, d) components."""
        n, d = x.shape
        k_max = min(n - 1, d)
        k = k_max if dim is None else int(dim)
        if not 1 <= k <= k_max:
            raise MetarecError(
                f"PCA: cannot keep {k} components from {n} fit items of dimension {d} "
                f"(at most {k_max})"
            )
        x = x.astype(np.float64)
        mean = x.mean(0)
        # SVD of the centred data: rows of vt are principal axes, s**2/(n-1) their variances
        # (one BLAS thread, as in apply: the same bits on any number of cores)
        with threadpool_limits(1, user_api="blas"):
            _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        comps = vt[:k].T  # (d, k)
        # Fix each axis's sign (largest |loading| positive) so refits give identical outputs.
        pivot = comps[np.abs(comps).argmax(0), np.arange(k)]
        comps = comps * np.where(pivot < 0, -1.0, 1.0)
        if whiten:
            var = s[:k] ** 2 / max(n - 1, 1)
            mean_var = float(var.mean()) if k else 1.0
            # every axis gets the mean variance, not 1: the total scale stays the plain
            # PCA's, which the default learning rates are tuned to (at unit variance a
            # 64-d input had ~10x its norm and MAML's inner loop diverged at step 1).
            # The ridge (1% of the mean) bounds how much a near-empty axis is amplified:
            # a new item's noise along it was blown up by up to 1/sqrt(1e-6)
            comps = comps * np.sqrt(mean_var / (var + 1e-2 * mean_var + 1e-12))
        return cls(mean.astype(np.float32), comps.astype(np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        # one BLAS thread: a multi-threaded product sums in another order, the features
        # move in their last bits, and training amplifies that like a change of seed (the
        # quickstart's nDCG@10 was 0.1270 on one thread and 0.1211 on two, OpenBLAS's
        # default on a 2-core machine). (n, d) @ (d, k) with k ~ 64 is cheap on one.
        with threadpool_limits(1, user_api="blas"):
            return ((x - self.mean) @ self.components).astype(np.float32)


def _tokens(v) -> list[str]:
    """Category tokens of one cell: missing -> [], "a|b" -> [a, b]."""
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return []
    return [t.strip() for t in str(v).split("|") if t.strip()]


def _multi_hot(
    values: list, fit_rows: np.ndarray, max_categories: int
) -> tuple[np.ndarray, list[str]]:
    """(n, k) float32 multi-hot over the k most frequent tokens among fit rows, + tokens."""
    toks = [_tokens(v) for v in values]
    counts: dict[str, int] = {}
    for i in fit_rows:
        for t in toks[i]:
            counts[t] = counts.get(t, 0) + 1
    # most frequent first, ties by name: a deterministic column order
    vocab = sorted(counts, key=lambda t: (-counts[t], t))[:max_categories]
    return _apply_vocab(toks, vocab), vocab


def _apply_vocab(toks: list[list[str]], vocab: list[str]) -> np.ndarray:
    """(n, k) float32 multi-hot of each row's tokens over ``vocab``; others are 0."""
    col = {t: j for j, t in enumerate(vocab)}
    out = np.zeros((len(toks), len(vocab)), dtype=np.float32)
    for i, ts in enumerate(toks):
        for t in ts:
            if t in col:
                out[i, col[t]] = 1.0
    return out


def _multi_valued(values: list) -> bool:
    """Whether a text column is a "|"-separated multi-valued one (genres): some cell holds
    a "|", and either a tenth of its non-empty cells do or its distinct tokens number at
    most half its cells. A free-text column with a stray "|" ("The Hunger Games | Catching
    Fire"; 35 of Amazon Food-Kitchen's 36,298 titles, 0.1%) became 64 one-hot columns of
    single titles, ID flags for arbitrary items. ML-100K's genres: "|" in 50% of cells,
    19 tokens over 1,682."""
    cells = [v for v in values if isinstance(v, str) and v.strip()]
    piped = sum("|" in v for v in cells)
    if piped == 0:
        return False
    if piped >= 0.1 * len(cells):
        return True
    tokens = {t.strip() for v in cells for t in v.split("|") if t.strip()}
    return len(tokens) <= 0.5 * len(cells)


@dataclass(frozen=True)
class NumericScale:
    """How one numeric side column becomes a feature (:func:`numeric_features`): log1p
    first where ``log``, then (x - mu) / scale, clipped to [lo, hi] (the fit rows' range
    in those units) and to ±``MAX_Z``; missing -> 0. ``lo`` None: no fit row had a value,
    and the column is 0 for everyone."""

    column: str
    log: bool
    mu: float
    scale: float
    lo: float | None
    hi: float | None

    @classmethod
    def fit(cls, column: str, x: np.ndarray, fit: np.ndarray) -> NumericScale:
        ref = x[fit]
        ref = ref[~np.isnan(ref)]
        log = _heavy_count(ref)
        if log:
            # a count with a long right tail (ratings_count, reviews: skew 10-40 on
            # goodbooks' books.csv) on a log scale: z-scored raw, a handful of blockbusters
            # sat at +5 in several correlated columns at once and second-order MAML
            # diverged at step 1
            ref = np.log1p(ref)
        # moments of x / max|x|, scaled back: values near 1e200 (or 1e-300) overflowed (or
        # underflowed) the variance, and the column silently became a constant
        m = float(np.abs(ref).max()) if len(ref) else 0.0
        m = m if m > 0 else 1.0
        mu = m * (ref / m).mean() if len(ref) else 0.0
        sd = m * (ref / m).std() if len(ref) > 1 else 0.0
        scale = sd if sd > 0 else 1.0
        if not len(ref):
            return cls(column, log, float(mu), float(scale), None, None)
        lo, hi = (ref.min() - mu) / scale, (ref.max() - mu) / scale
        return cls(column, log, float(mu), float(scale), float(lo), float(hi))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(n,) float32 feature of the column's float64 values ``x`` (NaN = missing)."""
        if self.log:
            # the fitted counts are >= 0 (_heavy_count): a negative value is below the
            # fitted range, clipped to its bottom as any such value is (log1p gave NaN,
            # read as missing, below -1, and -inf at -1, each with numpy's warning)
            x = np.log1p(np.maximum(x, 0.0))
        z = (x - self.mu) / self.scale
        if self.lo is not None:
            # clipped to the fit rows' range: a model has learnt nothing about values beyond
            # it, and a linear layer extrapolates them without bound
            z = np.clip(z, self.lo, self.hi)
        else:
            # no fit row has a value: the model learns the column as 0 for everyone, and a
            # held-out row's raw value (an age of 30 read as z = +5 after the clip) would
            # be an input it never met (probe 170)
            z = np.zeros_like(z)
        z = np.clip(z, -MAX_Z, MAX_Z)
        return np.nan_to_num(z, nan=0.0).astype(np.float32)


def _numeric_values(frame: pd.DataFrame, column: str) -> np.ndarray:
    """(n,) float64 values of a numeric column; missing and inf cells NaN."""
    x = np.asarray(frame[column].to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    # an inf cell is a missing value: kept, it made the mean and std NaN and zeroed the
    # whole column
    return np.where(np.isfinite(x), x, np.nan)


@dataclass(frozen=True)
class SideEncoder:
    """How :func:`side_features` turned a side table into features, fitted on some rows:
    kept so that rows met later (a user who arrives after ``fit`` with age, gender and
    occupation) are encoded exactly as the fitted rows were.

    ``categorical``: (column, vocabulary) per multi-hot block, in column order;
    ``numeric``: one :class:`NumericScale` per numeric column; ``columns``: every side
    column of the fitted table by kind ("categorical", "text", "numeric"), what a later
    table may name."""

    categorical: tuple[tuple[str, tuple[str, ...]], ...]
    numeric: tuple[NumericScale, ...]
    columns: tuple[tuple[str, str], ...] = ()
    # a timestamp column's numbers are Unix seconds (since the eighth session of
    # 2026-12-07); an encoder read from an earlier RUN had its file's unit (us or ns)
    timestamps_in_seconds: bool = True

    @classmethod
    def fit(
        cls, table: SideTable, fit_rows: np.ndarray | None = None, max_categories: int = 64
    ) -> SideEncoder:
        frame = table.frame
        n = len(frame)
        fit = np.arange(n) if fit_rows is None else np.asarray(fit_rows, dtype=np.int64)
        cat_cols = list(table.categorical_columns)
        for c in table.text_columns:
            # "a|b" is the loaders' multi-valued convention (MovieLens genres), judged on
            # the fit rows as the vocabulary is: held-out items' cells alone made a column
            # multi-valued, and the training items then got one-hot flags of single blurbs
            if _multi_valued(frame[c].iloc[fit].tolist()):
                cat_cols.append(c)
        categorical = []
        for c in cat_cols:
            _, vocab = _multi_hot(frame[c].tolist(), fit, max_categories)
            categorical.append((c, tuple(vocab)))
        numeric = tuple(
            NumericScale.fit(c, _numeric_values(frame, c), fit) for c in table.numeric_columns
        )
        columns = (
            *((c, "categorical") for c in table.categorical_columns),
            *((c, "text") for c in table.text_columns),
            *((c, "numeric") for c in table.numeric_columns),
        )
        return cls(tuple(categorical), numeric, tuple(columns))

    @property
    def names(self) -> list[str]:
        """The feature columns' names: "column=token" per multi-hot, then numerics."""
        return [f"{c}={t}" for c, vocab in self.categorical for t in vocab] + [
            s.column for s in self.numeric
        ]

    def apply(self, frame: pd.DataFrame) -> np.ndarray:
        """(len(frame), d) float32 features of ``frame``'s rows (its side columns as the
        fitted table's; a column it lacks is missing on every row)."""
        n = len(frame)
        blocks = []
        for c, vocab in self.categorical:
            toks = [_tokens(v) for v in frame[c].tolist()] if c in frame else [[]] * n
            blocks.append(_apply_vocab(toks, list(vocab)))
        blocks.append(self.apply_numeric(frame))
        return np.concatenate(blocks, axis=1)

    def apply_numeric(self, frame: pd.DataFrame) -> np.ndarray:
        """(len(frame), d_numeric) float32: the numeric block of :meth:`apply`. With k > 1
        columns each is divided by sqrt(k): ten correlated columns at z = 5 were a 50-wide
        input step that one column never is (MovieLens' and goodbooks' one year column is
        unchanged)."""
        n = len(frame)
        cols = [np.zeros((n, 0), dtype=np.float32)]
        for scale in self.numeric:
            x = (
                _numeric_values(frame, scale.column)
                if scale.column in frame
                else np.full(n, np.nan)
            )
            cols.append(scale.apply(x)[:, None])
        out = np.concatenate(cols, axis=1)
        if len(self.numeric) > 1:
            out /= np.float32(np.sqrt(len(self.numeric)))
        return out

    def to_json(self) -> dict:
        return {
            "categorical": [[c, list(vocab)] for c, vocab in self.categorical],
            "numeric": [dataclasses.asdict(s) for s in self.numeric],
            "columns": [list(c) for c in self.columns],
            "timestamps": "unix_seconds" if self.timestamps_in_seconds else "file_unit",
        }

    @classmethod
    def from_json(cls, doc: dict) -> SideEncoder:
        try:
            return cls(
                tuple((str(c), tuple(str(t) for t in vocab)) for c, vocab in doc["categorical"]),
                tuple(NumericScale(**s) for s in doc["numeric"]),
                tuple((str(c), str(kind)) for c, kind in doc["columns"]),
                timestamps_in_seconds=doc.get("timestamps") == "unix_seconds",
            )
        except (KeyError, TypeError, ValueError) as err:
            raise MetarecError(f"side encoder: unreadable ({type(err).__name__}: {err})") from None


def side_features(
    table: SideTable | None, n: int, fit_rows: np.ndarray | None = None, max_categories: int = 64
) -> tuple[np.ndarray, list[str]]:
    """Categorical multi-hots and z-scored numerics of a side table: ((n, d) float32, names).

    * categorical columns: one column per token among the ``max_categories`` most frequent
      on fit rows; cells "a|b" set several (multi-valued, e.g. genres). Unknown/missing: 0.
    * text columns holding "|"-separated values from a small vocabulary are treated the
      same way (:func:`_multi_valued`), so MovieLens genres become a multi-hot as well as
      text.
    * numeric columns: (x - mean) / std over fit rows, clipped to the fit rows' range;
      missing -> 0 (the mean).
    Statistics and vocabularies come from ``fit_rows`` only (all rows when None): a
    :class:`SideEncoder` fitted on them, applied to every row.
    """
    if table is None:
        return np.zeros((n, 0), dtype=np.float32), []
    encoder = SideEncoder.fit(table, fit_rows, max_categories)
    return encoder.apply(table.frame), encoder.names


# numeric side columns are z-scored and then clipped to ±MAX_Z. Why: a heavy tail makes a
# few extreme inputs (goodbooks' publication year reaches back to antiquity: z = -17 for 34
# of 4,278 books), and second-order MAML through the inner loop then diverged: `fit` on the
# bundled goodbooks-sample stopped with a NaN meta-loss at step 4-7 for some seeds (seed 1 on
# all rows, seed 0 on the user-cold split's training rows). Clipped at 5 both train. Set to
# stop that divergence, not tuned on any metric; MovieLens' year (min z -4.7) and age are
# inside it, so only goodbooks' features change.
MAX_Z = 5.0


def numeric_features(
    table: SideTable | None, n: int, fit_rows: np.ndarray | None = None
) -> tuple[np.ndarray, list[str]]:
    """The numeric columns of a side table as :func:`side_features` encodes them:
    ((n, d_numeric) float32, column names); (x - mean) / std over ``fit_rows`` (all rows
    when None; a non-negative column with skew over 2, a count, on a log1p scale),
    clipped to the fit rows' range and to ±``MAX_Z``, missing -> 0 (the mean); with k > 1
    columns each is divided by sqrt(k)."""
    if table is None:
        return np.zeros((n, 0), dtype=np.float32), []
    fit = np.arange(n) if fit_rows is None else np.asarray(fit_rows, dtype=np.int64)
    numeric = tuple(
        NumericScale.fit(c, _numeric_values(table.frame, c), fit) for c in table.numeric_columns
    )
    encoder = SideEncoder((), numeric)
    return encoder.apply_numeric(table.frame), [s.column for s in numeric]


def _heavy_count(ref: np.ndarray) -> bool:
    """A non-negative column with a long right tail (sample skewness over 2): counts."""
    if len(ref) < 3 or ref.min() < 0:
        return False
    top = float(ref.max())
    if top <= 0:
        return False
    ref = ref / top  # skewness does not change with scale; 1e200 values do not overflow
    sd = ref.std()
    if sd == 0 or not np.isfinite(sd):
        return False
    return float((((ref - ref.mean()) / sd) ** 3).mean()) > 2.0


def _as_encoder(encoder: TextEncoder | str) -> TextEncoder:
    return make_encoder(encoder) if isinstance(encoder, str) else encoder


def _fit_rows(fit_rows: np.ndarray | None, n: int, kind: str = "item") -> np.ndarray:
    """Indices of the ``kind`` ("item" or "user") rows statistics are fitted on, from
    ``fit_items``/``fit_users`` (indices or an (n,) mask; None: all n)."""
    if fit_rows is None:
        return np.arange(n, dtype=np.int64)
    rows = np.asarray(fit_rows)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise MetarecError(f"fit_{kind}s mask has shape {rows.shape}, expected ({n},)")
        return np.flatnonzero(rows)
    rows = rows.astype(np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise MetarecError(f"fit_{kind}s holds {kind} indices outside 0..{n - 1}")
    return np.unique(rows)


def _warn_merged_texts(
    texts: list[str], fit: np.ndarray, vecs: np.ndarray, encoder: TextEncoder
) -> None:
    """Warn where distinct training texts got the same vector: an encoder reads a bounded
    prefix (MiniLM: 256 word pieces), so a title after a long shared description is cut
    off, and emoji-only titles are all one unknown token. 40 distinct books with one long
    blurb first got 40 equal vectors, all zero after the PCA, and nothing said so."""
    rows = [i for i in fit if texts[i]]
    distinct = {texts[i]: i for i in rows}  # one row per distinct text
    if len(distinct) < 2:
        return  # the same-text warning above speaks for a single text
    idx = np.fromiter(distinct.values(), dtype=np.int64, count=len(distinct))
    # vecs: (n_items, d) float32; equal rows byte for byte (the encoder is deterministic)
    n_vectors = len({row.tobytes() for row in np.ascontiguousarray(vecs[idx])})
    merged = len(idx) - n_vectors
    if merged * 10 < len(idx):  # a few collisions (near-identical texts) are not news
        return
    warnings.warn(
        f"text: {merged} of {len(idx)} distinct training item texts got the same vector as "
        f"another ({encoder.fingerprint.split('|')[0]}): an encoder reads a bounded prefix "
        "of each text (MiniLM: 256 word pieces) and may map unknown symbols (emoji) to one "
        "token; put the column that tells items apart first in text.template",
        stacklevel=3,
    )


def build_features(
    dataset: Dataset,
    encoder: TextEncoder | str,
    cache: EmbeddingCache | str | Path | None = None,
    text_template: str | None = None,
    pca_dim: int | None = None,
    whiten: bool = False,
    fit_items: np.ndarray | None = None,
    *,
    fit_users: np.ndarray | None = None,
    reduce: str = "pca",
    user_text: bool = False,
    user_template: str | None = None,
    max_categories: int = 64,
    batch_size: int | None = None,
    show_progress: bool = False,
) -> FeatureSet:
    """φ inputs for every item and user of ``dataset``.

    item_text (n_items, d): encoder vectors of the rendered item texts (zero rows for items
    without text); with ``pca_dim`` and/or ``whiten`` they are centred and projected by a
    PCA fitted on ``fit_items`` (training item indices, or a boolean mask) only, so cold
    items never shape the projection. ``reduce="autoencoder"`` replaces the PCA by the
    code of an autoencoder (:func:`metarec.models.autoencoder.compress`, seeded) trained on
    the same rows, ``pca_dim`` wide. item_side: :func:`side_features` of the item table,
    its vocabularies and scalings also fitted on ``fit_items``. user_side: demographics
    (one-hot / z-scored), their vocabularies and scalings fitted on ``fit_users``
    (training user indices or a boolean mask; all users when None), plus the user text
    vector when ``user_text`` and users have text.
    Learned ID embeddings are not here: they belong to the model.
    """
    # checked here too, not only by TextConfig: called directly, an unknown reduce gave a
    # PCA, pca_dim=2.5 two components, and a non-Dataset an AttributeError
    if not isinstance(dataset, Dataset):
        raise MetarecError(f"build_features: expected a Dataset, got {type(dataset).__name__}")
    if reduce not in TEXT_REDUCERS:
        raise MetarecError(f"build_features: reduce {reduce!r} is not one of {TEXT_REDUCERS}")
    if pca_dim is not None and (
        isinstance(pca_dim, bool) or not isinstance(pca_dim, numbers.Integral) or pca_dim < 1
    ):
        raise MetarecError(
            f"build_features: pca_dim must be an integer >= 1 or None, got {pca_dim!r}"
        )
    if reduce == "autoencoder" and (pca_dim is None or whiten):
        raise MetarecError(
            "build_features: reduce='autoencoder' needs pca_dim (the code size) and no whiten"
        )
    encoder = _as_encoder(encoder)
    if cache is not None and not isinstance(cache, EmbeddingCache):
        cache = EmbeddingCache(cache)
    n_items, n_users = dataset.n_items, dataset.n_users
    fit = _fit_rows(fit_items, n_items)
    fit_u = _fit_rows(fit_users, n_users, "user")

    texts = item_texts(dataset.name, dataset.item_table, n_items, text_template)
    fit_texts = [texts[i] for i in fit if texts[i]]  # training items with text
    if len(fit_texts) > 1 and len(set(fit_texts)) == 1:
        # one text for every training item (a template with no {field}, a constant
        # column): centred by the PCA, every text vector was exactly zero, without a word
        only = fit_texts[0]
        only = only if len(only) <= 60 else only[:57] + "..."
        warnings.warn(
            f"text: every training item with text has the same text ({only!r}): the "
            "text features tell no two of them apart"
            + (
                " (text.template names no column)"
                if text_template and "{" not in text_template
                else ""
            ),
            stacklevel=2,
        )
    item_vecs, _ = embed_texts(texts, encoder, cache, batch_size, show_progress)
    _warn_merged_texts(texts, fit, item_vecs, encoder)
    if pca_dim is not None or whiten:
        has_text = np.array([bool(t) for t in texts])
        fit_text = fit[has_text[fit]]
        k_max = min(len(fit_text) - 1, item_vecs.shape[1])
        if k_max < 1:
            # nothing to fit a projection on (no training item has text): the raw vectors
            # (zero rows for textless items) go in as they are
            if not has_text.any():
                # the message said "0 training items have text, too few for PCA", naming
                # neither the missing text nor what the model gets instead
                warnings.warn(
                    "text: no item has text (the items file has no text column, or every "
                    "text cell is empty): the text features are all zero, and items are "
                    "told apart by their ids and side columns only",
                    stacklevel=2,
                )
            else:
                warnings.warn(
                    f"text: {len(fit_text)} training items have text, too few for PCA; "
                    "the text vectors are used unprojected",
                    stacklevel=2,
                )
        else:
            if pca_dim is not None and pca_dim > k_max:
                # a small catalogue cannot give the default 64 components: keep what it can
                # rather than refuse a default config
                why = (
                    f"the text encoder gives {item_vecs.shape[1]}-dimensional vectors"
                    if item_vecs.shape[1] <= len(fit_text) - 1
                    else f"only {len(fit_text)} training items have text"
                )
                warnings.warn(f"text.pca_dim {pca_dim} lowered to {k_max}: {why}", stacklevel=2)
                pca_dim = k_max
            if reduce == "autoencoder":
                item_vecs = _autoencoder_codes(item_vecs, fit_text, pca_dim)
            else:
                proj = TextProjection.fit(item_vecs[fit_text], pca_dim, whiten)
                item_vecs = proj.apply(item_vecs)
            item_vecs[~has_text] = 0.0  # keep "no text" distinguishable: zero rows stay zero

    item_side, _ = side_features(dataset.item_table, n_items, fit, max_categories)
    # fitted on the training users, as item_side on the training items: on every user,
    # the test users' ages moved the z-scores, and so training (probe 153)
    user_side, user_names = side_features(dataset.user_table, n_users, fit_u, max_categories)
    table = dataset.user_table
    # a text column side_features read as multi-valued ("a|b") is a multi-hot already:
    # the warning named it "not used" (probe 170)
    unused = (
        []
        if table is None
        else [
            c
            for c in table.text_columns
            if not any(name.startswith(f"{c}=") for name in user_names)
        ]
    )
    if not user_text and unused:
        # item text is embedded by default, user text only on request: say so, rather
        # than leave a users file's free-text columns unused without a word
        warnings.warn(
            f"user text column(s) {', '.join(unused)} are not used; set "
            "text.user_text=true to embed them as a user feature",
            stacklevel=2,
        )
    if user_text:
        utexts = user_texts(dataset.user_table, user_template)
        if utexts is not None:
            uvecs, _ = embed_texts(utexts, encoder, cache, batch_size, show_progress)
            user_side = np.concatenate([user_side, uvecs], axis=1)
        else:
            # asked for and silently dropped before (no users file, or one with no column
            # to render), as the "settings with no effect" warning says of meta settings
            warnings.warn(
                "setting with no effect: text.user_text (no users file, or it has no "
                "column to embed as user text)",
                stacklevel=2,
            )
    return FeatureSet(
        item_text=torch.from_numpy(np.ascontiguousarray(item_vecs, dtype=np.float32)),
        item_side=torch.from_numpy(item_side),
        user_side=torch.from_numpy(np.ascontiguousarray(user_side, dtype=np.float32)),
        encoder_fingerprint=encoder.fingerprint,
    )


def _autoencoder_codes(vecs: np.ndarray, fit_rows: np.ndarray, code_dim: int) -> np.ndarray:
    """(n, code_dim) codes of every row of ``vecs`` (n, d) from an autoencoder trained on
    ``fit_rows`` only, centred on their mean code (as the PCA's outputs are) and scaled so
    their total variance is the PCA's over the same rows: the scorer's learning rates
    were tuned on inputs of that scale."""
    from metarec.models.autoencoder import compress

    fit = np.asarray(vecs[fit_rows], dtype=np.float32)
    _, ae = compress(fit, code_dim=code_dim, seed=0)
    with torch.no_grad():
        codes = ae.encode(torch.from_numpy(np.ascontiguousarray(vecs, np.float32))).numpy()
    centre = codes[fit_rows].mean(0)
    codes = codes - centre
    pca_var = TextProjection.fit(fit, code_dim).apply(fit).var(0).sum()
    ae_var = codes[fit_rows].var(0).sum()
    return (codes * np.sqrt(pca_var / max(float(ae_var), 1e-12))).astype(np.float32)


def embed_dataset(
    dataset: Dataset,
    encoder: TextEncoder | str,
    cache_dir: str | Path,
    template: str | None = None,
    batch_size: int | None = None,
    show_progress: bool = True,
    users: bool = True,
) -> dict:
    """Embed a dataset's item texts (and user texts, where users have any and ``users``)
    into the cache.

    What ``metarec embed`` runs. Returns a JSON-ready summary: counts, dimension, cache
    hits/misses (over non-empty texts, items and users together) and wall seconds.
    """
    t0 = time.perf_counter()
    encoder = _as_encoder(encoder)
    cache = EmbeddingCache(cache_dir)
    texts = item_texts(dataset.name, dataset.item_table, dataset.n_items, template)
    ivecs, istats = embed_texts(texts, encoder, cache, batch_size, show_progress)
    utexts = user_texts(dataset.user_table) if users else None
    ustats = {"hits": 0, "misses": 0, "encoded": 0, "n_text": 0}
    if utexts is not None:
        _, ustats = embed_texts(utexts, encoder, cache, batch_size, show_progress)
    seconds = time.perf_counter() - t0
    n_text = istats["n_text"] + ustats["n_text"]
    return {
        "dataset": dataset.name,
        "encoder": encoder.fingerprint,
        "dim": int(ivecs.shape[1]),
        "n_items": dataset.n_items,
        "items_with_text": istats["n_text"],
        "n_users": dataset.n_users,
        "users_with_text": ustats["n_text"],
        "hits": istats["hits"] + ustats["hits"],
        "misses": istats["misses"] + ustats["misses"],
        "encoded": istats["encoded"] + ustats["encoded"],
        # the cache's own repairs: shards dropped as damaged, an index rebuilt, and
        # whether the newly encoded vectors were stored for the next run
        "dropped_shards": int(istats.get("dropped_shards", 0) + ustats.get("dropped_shards", 0)),
        "index_rebuilt": bool(istats.get("index_rebuilt") or ustats.get("index_rebuilt")),
        "stored": bool(istats.get("stored", True) and ustats.get("stored", True)),
        "seconds": round(seconds, 3),
        "texts_per_second": round(n_text / seconds, 1) if seconds > 0 else None,
        "cache_dir": str(cache.root),
    }
