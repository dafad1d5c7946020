"""Predictor: a fitted MetaRecommender with its id maps — raw ids in, raw ids out.

This is what a RUN directory holds and what ``predict``, ``recommend`` and the web service
use. Users present in the training log are *warm* (their training rows join any support
they bring); users absent from it are *cold* and are adapted on their support alone. Items
in the catalogue but never interacted with are *cold items*: the text features carry them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from metarec import __version__
from metarec.artifacts import Run, load_run, save_run
from metarec.data.raw import RawData
from metarec.data.tabular import clip
from metarec.errors import exact_g, first_line
from metarec.model import MetaRecommender, ModelConfig
from metarec.recommender import check_k, off_scale, top_k
from metarec.types import Dataset, IdMap, Interactions, MetarecError
from metarec.user_side import KEY as USER_FEATURES
from metarec.user_side import UserFeatures


def _cpu_way_out(device: object) -> str:
    return "" if str(device) == "cpu" else "; --device cpu loads it on the CPU"


def _unknown_items_note(stats: dict) -> str:
    """What the support's unknown items were, for an error about one of its users: "
    (across the support, N rows name items outside the catalogue, first '7'; the
    catalogue has '007': ids are compared as written)", or "" where all were known."""
    n = stats.get("unknown_support_items", 0)
    if not n:
        return ""
    alike = stats.get("unknown_support_look_alike")
    return (
        f" (across the support, {n} row{'s' if n > 1 else ''} name{'' if n > 1 else 's'} "
        f"items outside the catalogue, first {stats.get('unknown_support_example')!r}"
        + (f"; the catalogue has {alike!r}: ids are compared as written)" if alike else ")")
    )


def _smoke_test(model: MetaRecommender) -> None:
    """Score one cold user with a one-item support through every part the RUN holds (the
    rating model and its blend, the ranking model and its blend, each on the whole
    catalogue, as recommend does): a RUN whose tensors do not fit its config (a shape,
    a missing table) fails here, at load, rather than on the first request."""
    cold, support = model.probe_support()
    every = np.arange(model.n_items_, dtype=np.int64)
    # the whole catalogue through both: an item's own bias or row can be what is broken
    # (an fp16 export overflowed 76 of a rating blend's item biases to inf, and two
    # items scored here passed)
    scores = model.score(cold, support, every)
    ranks = model.rank_scores(cold, support, every)
    if len(scores) != model.n_items_ or len(ranks) != model.n_items_:
        raise ValueError("the model returned scores of the wrong length")
    if not (np.isfinite(scores).all() and np.isfinite(ranks).all()):
        # not "from another version": the files are whole, their numbers are not
        raise MetarecError("the RUN's model scores NaN or inf (a weight is NaN or inf); refit it")


def _int_times(timestamps) -> np.ndarray:
    """(n,) int64 support timestamps, one line for a NaN or a non-number (a raw
    "cannot convert float NaN to integer" before)."""
    t = np.asarray(list(timestamps))
    if t.dtype.kind == "f" and not np.isfinite(t).all():
        raise MetarecError("support: a timestamp is NaN or infinite")
    if t.dtype.kind == "f" and len(t) and np.abs(t).max() >= 2.0**63:
        # cast, 1e30 wrapped to the smallest int64: the newest row ordered first
        raise MetarecError(
            f"support: timestamp {float(t[np.abs(t) >= 2.0**63][0]):g} is out of range"
        )
    try:
        return t.astype(np.int64)
    except (TypeError, ValueError) as err:
        raise MetarecError(f"support: timestamps must be whole numbers ({err})") from None


@dataclass(frozen=True, eq=False)
class UserSideRows:
    """Users' side data encoded for a view of one predictor (:meth:`Predictor.side_rows`),
    before the view is built (:meth:`Predictor.with_side_rows`). It holds the rows given,
    not the earlier view's: the server keeps one per (user, data) it has seen, and each
    held a copy of every earlier new user's row (a server on a view of 20,000 such
    users: 46 MB for 200 requests' entries; review 188)."""

    # the new users given now, (k, d_user) float32, in the order of ``given_ids``; None
    # when no row changes (every user kept theirs)
    given: np.ndarray | None
    given_ids: tuple[str, ...]
    refill: dict  # fitted user index -> (d_user,) row: training users given side data
    offset: int  # the view's index of given_ids[0]: after the cold row and earlier users
    stats: dict  # as Predictor.with_users returns it

    def index_of(self, user_id: str) -> int | None:
        """A new user's index in the view, if given now (else None)."""
        try:
            return self.offset + self.given_ids.index(user_id)
        except ValueError:
            return None

    def row_of(self, index: int) -> np.ndarray:
        """The (d_user,) row the view gives user ``index``: a filled training user's, or
        a new user's given now (:meth:`index_of`)."""
        if index in self.refill:
            return self.refill[index]
        j = index - self.offset
        if self.given is None or not 0 <= j < len(self.given):
            raise MetarecError(f"user index {index}: no row given now (not filled, not new)")
        return self.given[j]


@dataclass(frozen=True, eq=False)
class Predictor:
    model: MetaRecommender
    users: IdMap  # training users (index < n_users are warm)
    items: IdMap  # the whole catalogue
    item_domain: np.ndarray  # (n_items,) object: each item's domain name ("default" if none)
    train: Interactions  # the training rows (warm users' histories)
    info: dict  # dataset name, feedback, rating range, counts, encoder fingerprint
    # the precision `metarec export` stored the RUN in ("fp16", "int8"), None for a plain
    # fp32 RUN; kept out of ``info`` so a RUN saved from this predictor is plain fp32
    exported: str | None = None
    # the id of the RUN this predictor was loaded from (artifacts.Run.run_id: a digest of
    # its files' contents); None for one fitted here, or a RUN written before ids existed
    run_id: str | None = None
    # users the RUN was not fitted with who brought side data (:meth:`with_users`):
    # canonical id -> their index in ``model`` (a view, MetaRecommender.with_new_users)
    new_users: dict = field(default_factory=dict)
    # domain -> ((n_cand,) item indices, (n_items,) bool mask), filled on first use
    _domains: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def feedback_tag(self) -> str:
        """What a stored feedback row's value means on this run: its feedback kind and
        rating scale ("implicit" or "explicit 1..5"). Not the catalogue: a refit with new
        items, which update's warning asks for, reads the same store rightly."""
        if not self.explicit:
            return "implicit"
        lo, hi = self.model.rating_range_
        return f"explicit {lo!r}..{hi!r}"

    # --- building ----------------------------------------------------------------------
    @classmethod
    def fit(cls, dataset: Dataset, config: ModelConfig | None = None) -> Predictor:
        from metarec.data import dataset_info

        if not isinstance(dataset, Dataset):  # an AttributeError on .interactions before
            raise MetarecError(f"Predictor.fit: expected a Dataset, got {type(dataset).__name__}")
        from metarec.data.tabular import unservable_id

        # a RUN's ids follow the server's rule, as fit's files do (probe 186): checked
        # here for a dataset built in Python, before minutes of training
        for what, ids in (("user", dataset.users.ids), ("item", dataset.items.ids)):
            found = unservable_id(pd.Series(ids, dtype=object))
            if found is not None:
                raise MetarecError(f"Predictor.fit: {what} ids: {found[1]}")
        model = MetaRecommender(config).fit(dataset, dataset.interactions)
        item_domain = dataset.item_domain_names()
        info = dataset_info(dataset)
        info["encoder_fingerprint"] = model.features_.encoder_fingerprint
        return cls(model, dataset.users, dataset.items, item_domain, dataset.interactions, info)

    def save(self, path: str | Path) -> Path:
        cfg, tensors = self.model.state()
        tensors = dict(tensors)
        # the rows the model serves histories from (a loaded RUN indexes these): the
        # same as self.train from fit, update and load; a transfer model wrapped by hand
        # serves its target rows only, and saving self.train had moved its scores after
        # a reload by up to 0.8 stars
        rows = getattr(self.model, "train_rows_", None)
        rows = self.train if rows is None else rows
        for f in ("user_idx", "item_idx", "rating", "timestamp", "domain"):
            tensors[f"train.{f}"] = torch.from_numpy(np.asarray(getattr(rows, f)).copy())
        domains = sorted(set(self.item_domain.tolist()))
        code = {d: i for i, d in enumerate(domains)}
        tensors["item_domain"] = torch.tensor(
            [code[d] for d in self.item_domain], dtype=torch.int32
        )
        meta = {**self.info, "item_domains": domains}
        encoder = self.model.user_features_
        if encoder is not None:
            meta[USER_FEATURES] = encoder.to_json()
        return save_run(
            path,
            config=cfg,
            tensors=tensors,
            ids={"users": self.users, "items": self.items},
            meta=meta,
        )

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> Predictor:
        """Load a RUN; ``device`` (cpu, cuda, auto) places the model for scoring."""
        return cls.from_run(load_run(path), device)

    @classmethod
    def from_run(cls, run: Run, device: str | None = None) -> Predictor:
        """A predictor from a RUN's contents (as :func:`metarec.artifacts.load_run` reads
        them, or as `metarec export` builds them before writing anything)."""
        path = run.path
        # in memory every RUN is float32: the loaded predictor's info drops the export
        # record, so a RUN saved from it (`metarec update` of an exported RUN) is an
        # ordinary fp32 RUN that says so (it kept "export" and could not be loaded)
        info = {k: v for k, v in run.meta.items() if k not in ("export", USER_FEATURES)}
        try:
            t = run.tensors
            if run.meta.get("export"):  # an fp16/int8 RUN from `metarec export`
                from metarec.export import dequantize

                t = dequantize(t, run.meta["export"])
            train = Interactions(
                *(
                    t[f"train.{f}"].numpy()
                    for f in ("user_idx", "item_idx", "rating", "timestamp", "domain")
                )
            )
            try:
                model = MetaRecommender.from_state(run.config, t, train)
            except MetarecError as err:
                # a config key this version does not know: the RUN is from a newer one
                raise MetarecError(
                    f"{path}: RUN's config.json does not load in metarec {__version__}, the "
                    f"RUN is from another version or damaged ({err})"
                ) from None
            # meta.json's feedback and scale decide how supports are read and checked;
            # disagreeing with the model's own, the RUN's files are mixed or edited (a
            # meta.json without them blamed every rating of the support, probe 130)
            said = (run.meta.get("feedback"), run.meta.get("rating_range"))
            has = (model.feedback_, model.rating_range_)
            if said[0] != has[0] or (
                said[1] is not None
                and has[1] is not None
                and [float(v) for v in said[1]] != [float(v) for v in has[1]]
            ):
                raise ValueError(
                    f"meta.json says feedback {said[0]!r}, rating range {said[1]}; the model "
                    f"in config.json {has[0]!r}, {list(has[1]) if has[1] is not None else None}"
                )
            if USER_FEATURES in run.meta:  # RUNs fitted with a users file (since 2026-12-07)
                model.user_features_ = UserFeatures.from_json(run.meta[USER_FEATURES])
            domains = run.meta["item_domains"]
            item_domain = np.asarray(domains, dtype=object)[t["item_domain"].numpy()]
            users, items = run.ids["users"], run.ids["items"]
            if (len(users), len(items)) != (model.n_users_, model.n_items_):
                raise ValueError(
                    f"{len(users)} user and {len(items)} item ids for a model of "
                    f"{model.n_users_} users and {model.n_items_} items"
                )
            if device is not None:
                try:
                    model.to(device)  # an unknown or missing device is a MetarecError
                except RuntimeError as err:
                    # a CUDA error or a full GPU: the device's doing, not the RUN's (it was
                    # reported as a damaged RUN)
                    raise MetarecError(
                        f"{path}: cannot place the model on {device} "
                        f"({type(err).__name__}: {first_line(err)}){_cpu_way_out(device)}"
                    ) from None
            try:
                _smoke_test(model)  # on the device it will serve from
            except MetarecError as err:
                raise MetarecError(f"{path}: {err}") from None
            except torch.cuda.OutOfMemoryError as err:
                # the GPU's doing, not the RUN's: it was reported as a damaged RUN
                on = str(model.features_.item_text.device)  # "auto" named as chosen
                raise MetarecError(
                    f"{path}: out of memory on {on} ({first_line(err)}){_cpu_way_out(on)}"
                ) from None
        except MetarecError:
            raise
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            IndexError,
            RuntimeError,
            OverflowError,  # an n_items of 10**30 reached scipy as a C long
        ) as err:
            raise MetarecError(
                f"{path}: RUN is incomplete or from another version "
                f"({type(err).__name__}: {first_line(err)})"
            ) from None
        record = run.meta.get("export")
        exported = str(record.get("dtype")) if isinstance(record, dict) else None
        return cls(model, users, items, item_domain, train, info, exported, run.run_id)

    # --- raw ids -> indices ------------------------------------------------------------
    @property
    def explicit(self) -> bool:
        # the model's own feedback: a Predictor built by hand around a fitted model with
        # an info of {} read as a run on labels, and its 1-5 feedback was refused
        # (from_run refuses a meta.json that disagrees with the model)
        kind = getattr(self.model, "feedback_", None) or self.info.get("feedback")
        return kind == "explicit"

    def user_index(self, user_id: str | None) -> int:
        """Warm users keep their index; users who brought side data (:meth:`with_users`)
        theirs after it; unknown or anonymous users are cold (index n_users)."""
        if user_id is not None and user_id in self.users:
            return self.users.index(user_id)
        return self.new_users.get(user_id, len(self.users))

    def with_users(self, users: pd.DataFrame | None) -> tuple[Predictor, dict]:
        """This predictor, also knowing the side data of users the RUN has no side data
        for: ``users`` holds ``user_id`` and side columns of the users file ``fit`` was
        given (a column it lacks is missing; one the fit's file lacked, or a number column
        cell that is no number, is an error, on every row). Each such user's row is
        encoded as fit encoded that file's rows (its vocabularies and scalings,
        :class:`metarec.user_side.UserFeatures`): a user new to the RUN gets a row of
        their own; a training user whose fitted row holds no side data (not in the file,
        or every cell of theirs missing; a feedback user ``update`` added) gets theirs
        filled, keeping their history; a user with fitted side data keeps it. On a view
        from an earlier call its new users stay (one given again takes the new row). Returns
        (the predictor, {"new_users_with_side_data": n, "users_given_side_data": n,
        "listed_users_kept": n}); ``users`` None: this predictor, unchanged."""
        if users is None:
            return self, {}
        rows = self.side_rows(users)
        return self.with_side_rows(rows), rows.stats

    def side_rows(self, users: pd.DataFrame) -> UserSideRows:
        """:meth:`with_users`' first half: ``users`` read, checked and encoded, and where
        each row will sit in the view, without the view. The view copies the whole user
        table ((n_users, d_user) floats); the server encodes a request's ``user`` here and
        builds the view only when it must adapt, not on every request."""
        if not isinstance(users, pd.DataFrame):
            raise MetarecError(
                f"users: expected a pandas DataFrame with user_id and side columns, got "
                f"{type(users).__name__}"
            )
        from metarec.data.tabular import require_columns, unique_id_column

        where = users.attrs.get("source", "users")
        if not users.attrs.get("source"):
            users = _python_frame(users, "users")
        encoder = self.model.user_features_
        if encoder is None:
            raise MetarecError(
                f"{where}: this RUN cannot encode users' side data: it was fitted without "
                "a users file (or by an earlier metarec, or on features built outside "
                "fit); fit with --users U.csv to use them"
            )
        if self.model.features_.user_side.shape[1] == 0:
            # fitted on a users file of ids only: no column to encode a row of, and every
            # row (n_users, 0) is as empty as a cold user's (it crashed reshaping to width 0)
            raise MetarecError(
                f"{where}: this RUN's users file gave no side data to encode (no side "
                "column, or none with a value: user_id only); leave it out"
            )
        require_columns(users, ["user_id"])
        ids = unique_id_column(users, "user_id", where).to_numpy(object)
        # every row read and checked, a listed user's too: a typo in a column is an error
        # whoever's row it is on
        # errors name the user, but not the server's stand-in for a request without one
        named = None if users.attrs.get("anonymous") else ids
        frame = encoder.frame(users[[c for c in users.columns if c != "user_id"]], where, named)
        fitted = self.model.features_.user_side
        index = np.array([self.users.index(u) if u in self.users else -1 for u in ids])
        new = index < 0
        kept = np.array([i >= 0 and bool(fitted[i].any()) for i in index], dtype=bool)
        filled = ~new & ~kept
        stats = {
            "new_users_with_side_data": int(new.sum()),
            "users_given_side_data": int(filled.sum()),
            "listed_users_kept": int(kept.sum()),
        }
        width = fitted.shape[1]
        first = len(self.users) + 1  # n_users is the featureless cold user
        if not (new | filled).any():
            return UserSideRows(None, (), {}, first, stats)
        rows = encoder.encode(frame.loc[new | filled].reset_index(drop=True))
        rows = np.asarray(rows, dtype=np.float32).reshape(-1, width)
        order = np.flatnonzero(new | filled)  # rows[j] is users' row order[j]
        at_new = [j for j, r in enumerate(order) if new[r]]
        given_ids = tuple(str(ids[order[j]]) for j in at_new)
        # a view of a view keeps the earlier view's new users before those given now (one
        # given again takes the row given now): with_side_rows places them
        again = set(given_ids)
        earlier = sum(u not in again for u in self.new_users)
        refill = {int(index[order[j]]): rows[j] for j in range(len(order)) if filled[order[j]]}
        return UserSideRows(rows[at_new], given_ids, refill, first + earlier, stats)

    def with_side_rows(self, rows: UserSideRows) -> Predictor:
        """:meth:`with_users`' second half: the view holding ``rows``, which
        :meth:`side_rows` of this same predictor gave (this predictor if they change no
        row). The view's rows after the cold row, (m, d_user): this predictor's earlier
        new users (those not given again), then those given now."""
        if rows.given is None:
            return self
        given = set(rows.given_ids)
        earlier = [(u, i) for u, i in self.new_users.items() if u not in given]
        first = len(self.users) + 1
        if first + len(earlier) != rows.offset:
            raise MetarecError("with_side_rows: these rows were encoded for another predictor")
        kept = self.model.features_.user_side[[i for _, i in earlier]].cpu().numpy()
        mapping = {u: first + k for k, (u, _) in enumerate(earlier)}
        mapping.update({u: rows.offset + j for j, u in enumerate(rows.given_ids)})
        extra = np.concatenate([kept.reshape(len(earlier), rows.given.shape[1]), rows.given])
        return dataclasses.replace(
            self,
            model=self.model.with_new_users(extra, rows.refill),
            new_users=mapping,
        )

    def support_of(
        self, item_ids: Iterable, ratings: Iterable, timestamps: Iterable | None = None
    ) -> tuple[Interactions, list[str]]:
        """(support interactions in time order, unknown item ids that were left out)."""
        item_ids = [str(i) for i in item_ids]
        # checked as given, then stored as float32: checked after the cast, an implicit
        # run's 0.99999999 became a 1 and passed here while the CLI and /feedback refused it
        given = np.asarray(list(ratings), dtype=np.float64)
        if len(given) != len(item_ids):
            raise MetarecError("support: item ids and ratings differ in length")
        self.check_values(given)
        ratings = given.astype(np.float32)
        # a dict lookup per id: the service calls this per request with ~10 ids, where the
        # vectorised pandas lookup costs milliseconds of fixed overhead
        items = self.items
        idx = np.asarray([items.index(i) if i in items else -1 for i in item_ids], np.int64)
        ok = idx >= 0
        unknown = [i for i, k in zip(item_ids, ok, strict=True) if not k]
        ts = (
            np.arange(len(item_ids), dtype=np.int64)
            if timestamps is None
            else _int_times(timestamps)
        )
        order = np.argsort(ts[ok], kind="stable")
        items_o, ratings_o, ts_o = idx[ok][order], ratings[ok][order], ts[ok][order]
        # an item named twice keeps its latest row (newest timestamp; without timestamps,
        # the later row): a user's re-rating replaces the old one, on every path
        _, last_rev = np.unique(items_o[::-1], return_index=True)
        keep = np.sort(len(items_o) - 1 - last_rev)
        n = len(keep)
        inter = Interactions(
            np.zeros(n, np.int64), items_o[keep], ratings_o[keep], ts_o[keep], np.zeros(n)
        )
        return inter, unknown

    def check_values(self, ratings: np.ndarray, what: str = "support") -> None:
        """Ratings a support (or stored feedback) may hold: finite; on the run's rating
        scale for explicit data (far outside it adaptation diverges: a 50 on a 1-5 run gave
        NaN scores); 0 or 1 for implicit data, as in a ``label`` column."""
        ratings = np.asarray(ratings, dtype=np.float64)
        if not np.isfinite(ratings).all():
            raise MetarecError(f"{what}: a rating is not a finite number")
        bad = self.unfit_values(ratings)
        if not len(bad):
            return
        rows = f"{len(bad)} such {'row' if len(bad) == 1 else 'rows'}"
        if self.explicit:
            lo, hi = self.model.rating_range_
            raise MetarecError(
                f"{what}: rating {exact_g(bad[0])} is outside the run's rating scale "
                f"[{lo:g}, {hi:g}] ({rows})"
            )
        raise MetarecError(
            f"{what}: value {exact_g(bad[0])} on a run fitted on 0/1 labels "
            f"(give 1 for an interaction, 0 for an explicit 'no'; {rows})"
        )

    def unfit_values(self, ratings: np.ndarray) -> np.ndarray:
        """The finite ``ratings`` this run cannot adapt on (what :meth:`check_values`
        refuses): off its rating scale for explicit data (compared as
        :func:`metarec.recommender.off_scale` compares), anything but 0 and 1 for labels."""
        ratings = np.asarray(ratings, dtype=np.float64)
        if self.explicit:
            return off_scale(ratings, self.model.rating_range_)
        return ratings[(ratings != 0) & (ratings != 1)]

    def _supports_from_frame(
        self, frame: pd.DataFrame
    ) -> tuple[dict[str, Interactions], dict, dict | None]:
        """Per-user support interactions from an S table: a frame :func:`read_log` read
        (the CLI), or one built in Python, which is read here the same way (its feedback
        kind checked against the RUN's, dates and datetime64 timestamps converted).
        Returns (supports by canonical user id, :meth:`_support_stats` of the rows left out,
        canonical -> the caller's own spelling of each user id for a Python frame, else
        None)."""
        if not isinstance(frame, pd.DataFrame):
            raise MetarecError(
                f"support: expected a pandas DataFrame with user_id, item_id and rating (or "
                f"label) columns, got {type(frame).__name__}"
            )
        feedback = frame.attrs.get("feedback")
        given = None
        if feedback is None:
            from metarec.data.files import LOG_COLUMNS, log_frame
            from metarec.data.tabular import require_columns

            # the caller's columns, before the others are left out below
            frame = _python_frame(frame, "support")
            require_columns(frame, ["user_id", "item_id"])
            given = frame["user_id"].to_numpy(object)
            # a slice of the caller's own table may carry more columns (a title): the ones
            # an S file may hold are read, the others left out, not refused
            frame = frame[[c for c in frame.columns if c in LOG_COLUMNS]]
            frame, feedback, _ = log_frame(frame)
            # each user's id as the caller spelled it (an int stays an int), for recommend's
            # output: a str '3' beside an int-keyed frame merged with nothing
            spelled: dict = {}
            for canonical, raw in zip(frame["user_id"], given, strict=True):
                spelled.setdefault(canonical, raw)  # the first spelling of each user
            given = spelled
        # read_log / log_frame gave canonical str ids and a "rating" column (a label is
        # read into it, after the kind check here): no second pass over the ids
        self.check_feedback(feedback, frame.attrs.get("source", "support"))
        self._check_domains(frame, "support")
        # every row at once (support_of checks each user's): the count then covers them all
        self.check_values(frame["rating"].to_numpy(np.float64), "support")
        out, unknown_ids, repeated = {}, [], 0
        ts_col = "timestamp" if "timestamp" in frame.columns else None
        for user_id, rows in frame.groupby("user_id", sort=False):
            inter, unknown = self.support_of(
                rows["item_id"], rows["rating"], rows[ts_col] if ts_col else None
            )
            out[str(user_id)] = inter
            unknown_ids += unknown
            # support_of keeps a repeated catalogue item's newest row: the others are
            # counted, as fit counts T's (rows on unknown items are counted as those)
            repeated += len(rows) - len(unknown) - len(inter)
        return out, self._support_stats(unknown_ids, repeated), given

    def _support_stats(self, unknown: list[str], repeated: int = 0) -> dict:
        """``unknown_support_items`` (a count, as before) and, where there are any, the
        first of them and a catalogue id that is the same number spelled another way
        ("42" for "42.0"): the warning named neither (ids are compared as written).
        ``repeated_support_rows``: rows repeating a user's item, left out for its newest."""
        stats: dict = {"unknown_support_items": len(unknown), "repeated_support_rows": repeated}
        if unknown:
            from metarec.data.files import numeric_look_alike

            stats["unknown_support_example"] = unknown[0]
            alike = numeric_look_alike(unknown[0], pd.Series(self.items.ids))
            if alike is not None:
                stats["unknown_support_look_alike"] = alike
        return stats

    def _check_domains(self, frame: pd.DataFrame, what: str) -> None:
        """The RUN's items file decided each item's domain; a support or query (``frame``,
        str item ids) naming another is a mix-up worth a line, not something to ignore."""
        # a file with no domain column reads as all "default" (as does one whose cells are
        # all empty, as a log's are): nothing to check, as for T; once any cell names a
        # domain, every row is checked, an empty cell as "default"
        if "domain" not in frame.columns or not (frame["domain"] != "default").any():
            return
        idx = self.items.lookup_or_missing(frame["item_id"].to_numpy(object))
        known = idx >= 0
        named = frame["domain"].astype(str).to_numpy(object)[known]
        differ = self.item_domain[idx[known]] != named
        if differ.any():
            j = int(np.flatnonzero(differ)[0])
            item = frame["item_id"].to_numpy(object)[known][j]
            raise MetarecError(
                f"{what}: item_id {item!r} is in domain {named[j]!r} there but "
                f"{self.item_domain[idx[known]][j]!r} in the RUN's catalogue "
                f"({int(differ.sum())} such row{'' if int(differ.sum()) == 1 else 's'})"
            )

    def check_feedback(self, feedback: str, what: str = "support") -> None:
        """A support file must carry the run's kind of feedback: ``rating`` for a run fitted
        on ratings, ``label`` for one fitted on 0/1 labels (read as ratings, labels would be
        the bottom of the scale, and ratings would be out of range for a 0/1 run)."""
        want = self.info.get("feedback")
        if want in ("explicit", "implicit") and feedback != want:
            have, need = ("label", "rating") if want == "explicit" else ("rating", "label")
            raise MetarecError(
                f"{what}: has a {have} column, but the RUN was fitted on {want} feedback "
                f"(give a {need} column, as in its training file)"
            )

    def _check_adaptable(
        self, user_id: str, uidx: int, sup: Interactions, what: str, stats: dict | None = None
    ) -> None:
        """A user with no training rows (``uidx`` is the unknown row) and no support rows on
        catalogue items has nothing to adapt on: an error, not a silent generic answer.
        ``stats`` (the support's, :meth:`_support_stats`) adds what the support's unknown
        items were: the warning that says so came only after a run that succeeded."""
        if uidx == len(self.users) and len(sup) == 0:
            raise MetarecError(
                f"{what} {user_id!r} has no support rows with items in the catalogue and is "
                f"not in the training data{_unknown_items_note(stats or {})}"
            )

    def look_alike_users(self, user_ids) -> list[tuple[str, str]]:
        """(given, training) id pairs for users absent from training whose id is a number
        spelled another way than a training user's ("7.0", "007", "+7" beside "7"): in a
        CSV such a user is a new, cold user, since ids are compared as written; worth a
        warning, since their training history then goes unused."""
        # training users are those with rows: a user listed only in the users file is not
        # one ("007" from a zero-padded U beside "7" in T was taken as known, unwarned)
        from metarec.data.files import whole_number_pairs

        trained = set(self.users.ids[np.unique(np.asarray(self.train.user_idx))].tolist())
        given = pd.Series([u for u in dict.fromkeys(str(u) for u in user_ids) if u not in trained])
        if given.empty:
            return []
        # both sides by their plain digits ("7" beside a training "007" too), as text, not
        # floats: ids past 2^53 read as one number
        return whole_number_pairs(given, pd.Series(sorted(trained), dtype=object))

    # --- the CLI contract --------------------------------------------------------------
    def predict(
        self, support: pd.DataFrame, query: pd.DataFrame, users: pd.DataFrame | None = None
    ) -> tuple[pd.DataFrame, dict]:
        """One score per query row (rating scale for explicit data, probability otherwise);
        ``users``: side data of users the RUN was not fitted with (:meth:`with_users`)."""
        if users is not None:
            view, user_stats = self.with_users(users)
            out, stats = view.predict(support, query)
            return out, {**stats, **user_stats}
        supports, support_stats, _ = self._supports_from_frame(support)
        if not isinstance(query, pd.DataFrame):
            raise MetarecError(
                f"query: expected a pandas DataFrame with user_id and item_id columns, got "
                f"{type(query).__name__}"
            )
        # the query's own spellings where it carries them (read_query), else its ids as
        # given (an int stays an int in the output); lookups use the canonical str ids
        raw = query.attrs.get("raw_ids") or {}
        if not raw:  # a frame built in Python (read_query has checked a file's header)
            query = _python_frame(query, "query")
        canon = _str_ids(query, "query")  # checks the columns too
        raw_users = raw.get("user_id", query["user_id"].to_numpy(object))
        raw_items = raw.get("item_id", query["item_id"].to_numpy(object))
        query = canon
        if "domain" in query.columns:
            # named as a log file's domains are (read_query leaves this to here): a frame
            # from pd.read_csv with a blank cell held 1.0 and nan, compared as "1.0", "nan"
            from metarec.data.files import domain_names

            query = query.assign(domain=domain_names(query["domain"]).to_numpy(object))
        self._check_domains(query, "query")
        qi = self.items.lookup_or_missing(query["item_id"].to_numpy(object))
        if (qi < 0).any():
            from metarec.data.files import numeric_look_alike

            bad = query["item_id"].to_numpy(object)[qi < 0][0]
            alike = numeric_look_alike(bad, pd.Series(self.items.ids))
            raise MetarecError(
                f"query item_id {bad!r} is not in the catalogue the model was fitted with "
                f"({int((qi < 0).sum())} unknown query items"
                + (f"; the catalogue has {alike!r}: ids are compared as written)" if alike else ")")
            )
        scores = np.empty(len(query), dtype=np.float64)
        users = query["user_id"].to_numpy(object)
        tasks, items_per_task, rows_per_task = [], [], []
        empty = Interactions.empty()
        for user_id in pd.unique(users):
            uidx = self.user_index(user_id)
            sup = supports.get(user_id, empty)
            self._check_adaptable(user_id, uidx, sup, "query user_id", support_stats)
            rows = np.flatnonzero(users == user_id)
            from metarec.types import Task

            tasks.append(Task(uidx, sup, empty))
            items_per_task.append(qi[rows])
            rows_per_task.append(rows)
        for rows, s in zip(
            rows_per_task, self.model.score_many(tasks, items_per_task), strict=True
        ):
            scores[rows] = s
        bad = ~np.isfinite(scores)
        if bad.any():  # never written as a score: P.csv would carry NaN rows silently
            raise MetarecError(
                f"predict: the model scored {int(bad.sum())} of {len(scores)} query rows NaN or "
                f"inf (first: user {raw_users[int(np.argmax(bad))]!r}); the RUN is damaged"
            )
        out = pd.DataFrame({"user_id": raw_users, "item_id": raw_items, "score": scores})
        return out, {
            **support_stats,
            "users": len(tasks),
            "look_alike_users": self.look_alike_users(pd.unique(users)),
        }

    def candidates(self, domain: str | None) -> np.ndarray:
        """(n_cand,) int64 item indices: the catalogue, or one domain's items (read-only)."""
        if domain is None:
            return np.arange(len(self.items), dtype=np.int64)
        return self._domain(domain)[0]

    def domain_mask(self, domain: str) -> np.ndarray:
        """(n_items,) bool, read-only: True on ``domain``'s items."""
        return self._domain(domain)[1]

    def _domain(self, domain: str) -> tuple[np.ndarray, np.ndarray]:
        # stripped as the files' domain cells are (" films" was an unknown domain)
        domain = str(domain).strip()
        # cached per domain: a string compare over a 36k-item catalogue plus the isin that
        # served /recommend built from it cost ~1.9 ms a request, on every request
        hit = self._domains.get(domain)
        if hit is None:
            mask = self.item_domain == domain
            if not mask.any():
                names = sorted(set(self.item_domain.tolist()))
                known = ", ".join(names[:20]) + (f", ... ({len(names)})" if len(names) > 20 else "")
                raise MetarecError(f"unknown domain {clip(domain)!r} (domains: {known})")
            cand = np.flatnonzero(mask).astype(np.int64)
            mask.flags.writeable = cand.flags.writeable = False
            hit = self._domains[domain] = (cand, mask)
        return hit

    def recommend_many(
        self,
        supports: dict[str, Interactions],
        k: int,
        domain: str | None = None,
        exclude_seen: bool = True,
    ) -> pd.DataFrame:
        """Top-k per user over the catalogue (or one domain), excluding the history."""
        check_k(k)
        cand = self.candidates(domain)
        from metarec.types import Task

        user_ids = list(supports)
        tasks = [Task(self.user_index(u), supports[u], Interactions.empty()) for u in user_ids]
        out_rows = []
        # the score column is what /recommend returns: P(like) from a like-logit, or the
        # rating itself where the rating model ranks (its sigmoid would be a near-1 number),
        # shown clipped to the scale (shown_rank_scores); the order is the unclipped rating's
        by_rating = self.model.ranks_by_rating
        for a in range(0, len(tasks), 64):
            chunk = tasks[a : a + 64]
            s = self.model.rank_scores_batch(chunk, cand)  # (T, n_cand)
            if np.isnan(s).any():  # NaN was taken for an excluded item, without a word
                raise MetarecError(
                    "recommend: the model ranked the catalogue with NaN scores; the RUN is damaged"
                )
            for row, task in enumerate(chunk):
                scores = s[row].copy()
                if exclude_seen:
                    seen, _ = self.model._history(task.user_idx, task.support)
                    scores[np.isin(cand, seen)] = -np.inf
                top = top_k(scores, k, finite=True)
                shown = (
                    self.model.shown_rank_scores(scores[top])
                    if by_rating
                    else 1.0 / (1.0 + np.exp(-scores[top]))
                )
                uid = user_ids[a + row]
                for rank, (j, v) in enumerate(zip(top, shown, strict=True), 1):
                    out_rows.append((uid, self.items.ids[cand[j]], rank, float(v)))
        return pd.DataFrame(out_rows, columns=["user_id", "item_id", "rank", "score"])

    def recommend(
        self,
        support: pd.DataFrame,
        k: int,
        domain: str | None = None,
        users: pd.DataFrame | None = None,
    ) -> tuple[pd.DataFrame, dict]:
        """Top-k per support user; also {"unknown_support_items": n,
        "repeated_support_rows": n, "users": n,
        "no_candidates": [user ids left with no item to recommend] (their support and
        history cover the catalogue, or ``domain``'s items: they get no rows),
        "look_alike_users": :meth:`look_alike_users` of the support's users}; ``users``:
        side data of users the RUN was not fitted with (:meth:`with_users`)."""
        if users is not None:
            if isinstance(users, pd.DataFrame) and not users.attrs.get("source"):
                users = _python_frame(users, "users")  # names stripped, as with_users reads
            view, user_stats = self.with_users(users)
            out, stats = view.recommend(support, k, domain)
            # recommend serves the support's users: one named in ``users`` alone is not
            # served (predict and the server score such a user), said by the CLI
            from metarec.data.tabular import unique_id_column

            named = set(unique_id_column(users, "user_id", "users").tolist())
            served = {str(u) for u in (*out["user_id"], *stats["no_candidates"])}
            user_stats["side_data_users_without_support"] = len(named - served)
            return out, {**stats, **user_stats}
        supports, support_stats, given = self._supports_from_frame(support)
        for user_id, sup in supports.items():
            self._check_adaptable(user_id, self.user_index(user_id), sup, "user_id", support_stats)
        out = self.recommend_many(supports, k, domain)
        served = set(out["user_id"])
        empty = [u for u in supports if u not in served]
        if given is not None:
            out["user_id"] = out["user_id"].map(given).astype(object)
            empty = [given[u] for u in empty]
        return out, {
            **support_stats,
            "users": len(supports),
            "no_candidates": empty,
            "look_alike_users": self.look_alike_users(supports),
        }


def _python_frame(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    """A frame built in Python, read as a file's header is: column names stripped, a name
    given twice refused (frame["rating"] became a DataFrame, and pandas raised), errors
    naming ``what`` and rows (it has no lines). A shallow copy: the caller's is untouched."""
    from metarec.data.tabular import strip_columns

    frame = frame.copy(deep=False)
    frame.attrs.update(source=what, rows_not_lines=True)
    return strip_columns(frame)


def _str_ids(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    """``frame`` with user_id and item_id as the str ids a RUN's id maps hold (12, 12.0
    and " 12" are all "12", as when a file is read): the Python API takes frames with int
    ids too, and looking an int up among str ids found nothing — a warm user's support
    was silently dropped and the user treated as cold."""
    from metarec.data.tabular import id_column, require_columns

    frame = frame.reset_index(drop=True)
    frame.attrs.setdefault("source", what)
    require_columns(frame, ["user_id", "item_id"])
    out = frame.copy()
    for column in ("user_id", "item_id"):
        out[column] = id_column(frame, column).to_numpy(object)
    return out


def fit_raw(raw: RawData, config: ModelConfig | None = None) -> Predictor:
    """Preprocess (default cleaning), index and fit: what ``metarec fit`` runs."""
    from metarec.preprocess import prepare

    return Predictor.fit(prepare(raw), config)
