"""Offline update from collected feedback: RUN + feedback store -> RUN2 (``metarec update``).

The online service adapts per request and never changes the model; this is the other half
of dynamic update. It does two things, and writes a new RUN atomically:

1. **Fold the feedback into the histories.** Feedback rows join the training log: a known
   user's row for an item replaces their training row for it (whatever its time, as serve's support does); feedback users the RUN
   has never seen are appended to the user table (zero side features, like any cold user).
   So in RUN2 a feedback user is *warm*: their feedback is part of the support every
   prediction adapts on, even when a request brings no interactions.
2. **Continue meta-training** every part of the model (rating and ranking scorers) from
   the RUN's meta-parameters for ``steps`` outer steps, on episodes drawn half from the
   feedback users' histories and half from everyone's (so the model moves toward the new
   tasks without forgetting the old ones), with the same episode sampler, labels and
   negatives as ``fit``. The feedback users are those with rows the RUN has not folded in:
   an update records the store's id and the last row it read, and a later update of its
   result from the same store merges every row again (their values are in the log
   already) but draws the feedback share from users with rows stored after that one.
   Feature matrices and the known-item set stay as fitted.

The report gives, per part, the mean post-adaptation query loss on the feedback users' tasks
(first K of their history as support, the rest as query) before and after. These tasks are
also trained on, so it is an in-sample check that the update moved, not a test metric.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from metarec.config import coerce_fields
from metarec.meta.episodes import build_inputs, make_episode, pad_episodes
from metarec.predictor import Predictor
from metarec.train import (
    TrainConfig,
    _TaskSampler,
    cpu_deterministic,
    evaluate_loss,
    resolve_episodes,
)
from metarec.types import MAX_SEED, IdMap, Interactions, MetarecError, Split

MAX_UPDATE_STEPS = 100_000


@dataclass(frozen=True)
class UpdateConfig:
    steps: int = 100  # outer steps per part
    outer_lr: float = 3e-4  # Adam; smaller than fit's: this is a fine-tune
    meta_batch: int = 32
    feedback_share: float = 0.5  # share of each meta-batch drawn from feedback users
    seed: int = 0

    def __post_init__(self) -> None:
        # built directly too, as from_dict builds it; outer_lr is checked below in
        # update's words (its nan and inf are the CLI's --lr)
        coerce_fields(self, skip=("outer_lr",))
        # written so that nan fails too (every comparison with nan is False)
        if not (self.steps >= 0 and self.meta_batch >= 1 and 0 < self.outer_lr < math.inf):
            raise MetarecError(
                f"update: steps >= 0, meta_batch >= 1, outer_lr finite and > 0 "
                f"(got {self.steps}, {self.meta_batch}, {self.outer_lr})"
            )
        if self.steps > MAX_UPDATE_STEPS:
            # update has no stopping rule: 10**12 steps ran on with no output until killed
            raise MetarecError(
                f"update: steps must be at most {MAX_UPDATE_STEPS} (a fold-in of feedback, "
                f"not a retraining: fit retrains, with early stopping), got {self.steps}"
            )
        if not 0 <= self.feedback_share <= 1:
            raise MetarecError("update: feedback_share must be in [0, 1]")
        if not 0 <= self.seed <= MAX_SEED:
            # named here: train.seed's message named a key update's user never set
            raise MetarecError(f"update: seed must be in [0, {MAX_SEED}], got {self.seed}")


def _item_domain_codes(pred: Predictor) -> np.ndarray:
    """(n_items,) int16: each item's domain as the training log codes domains (the
    dataset's domain order, RUN meta ``domains``). The item's domain comes from the RUN's
    item table, so an item nobody had rated keeps its own domain (it used to get code 0,
    another domain's); a domain no training row had gets the next free code."""
    code = {n: i for i, n in enumerate(_domain_names(pred))}
    out = np.zeros(len(pred.items), dtype=np.int16)
    out[pred.train.item_idx] = pred.train.domain  # what the log says, where it says it
    unrated = np.ones(len(pred.items), dtype=bool)
    unrated[pred.train.item_idx] = False
    for i in np.flatnonzero(unrated):
        out[i] = code[str(pred.item_domain[i])]
    return out


def _check_meta(info: dict) -> None:
    """The meta.json records update reads and writes on: a hand-edited RUN (its checksum
    rewritten) that predict and export still load ended update in a TypeError (a number
    for ``updates`` or ``domains``, a null ``rating_range``), or spread ``updates: "abc"``
    into three records."""
    where = "the RUN's meta.json"
    updates = info.get("updates")
    if updates is not None and not isinstance(updates, list):
        raise MetarecError(f"{where}: 'updates' is {type(updates).__name__}, not a list of records")
    domains = info.get("domains")
    if domains is not None and not (
        isinstance(domains, list) and all(isinstance(d, dict) and "name" in d for d in domains)
    ):
        raise MetarecError(f"{where}: 'domains' is not a list of {{name, ...}} records")
    scale = info.get("rating_range", (0.0, 1.0))
    ok = isinstance(scale, list | tuple) and len(scale) == 2
    if not ok or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in scale):
        raise MetarecError(f"{where}: 'rating_range' is {scale!r}, not two numbers")


def _domain_names(pred: Predictor) -> list[str]:
    """Domain names by code: the RUN's (meta ``domains``), then each domain only unrated
    items have, in catalogue order (the codes :func:`_item_domain_codes` gives them). The
    merged log's counts need them all: a feedback row on an unrated item of domain
    "default" had code 2 beside two named domains, and update died in an IndexError."""
    names = [d["name"] for d in pred.info.get("domains") or [] if isinstance(d, dict)]
    names = names or ["default"]
    unrated = np.ones(len(pred.items), dtype=bool)
    unrated[pred.train.item_idx] = False
    for name in dict.fromkeys(str(d) for d in pred.item_domain[unrated]):
        if name not in names:
            names.append(name)
    return names


def merge_feedback(
    pred: Predictor, feedback: pd.DataFrame, what: str = "feedback", since: int = 0
) -> tuple[IdMap, Interactions, np.ndarray, dict]:
    """(users with new ones appended, training log with the feedback folded in, indices of
    the feedback users, counts). ``feedback``: user_id, item_id, rating, timestamp (nullable),
    and with ``since`` > 0 seq (the store's row numbers). ``what`` names the feedback's
    source in a refusal of its values.

    ``since``: the last row an earlier update of this RUN folded in from this store. Every
    row is merged all the same (so the log follows the server's one rule for a user's rows,
    whatever update folded which), but the feedback users, whose tasks the update draws
    ``feedback_share`` of each batch from, are those with rows after it."""
    for col in ("user_id", "item_id", "rating", *(("seq",) if since else ())):
        if col not in feedback.columns:
            raise MetarecError(f"feedback: column {col!r} is missing")
    if feedback.empty:
        raise MetarecError("feedback: the store is empty, nothing to update from")
    fb = feedback.reset_index(drop=True)
    # (n_fb,) bool: rows no earlier update of this RUN has folded in
    fresh = fb["seq"].to_numpy(np.int64) > since if since else np.ones(len(fb), dtype=bool)
    if not fresh.any():
        raise MetarecError(
            f"feedback: no row stored since the update that wrote this RUN (it folded the "
            f"store's rows through number {since}): nothing new to update from (update the "
            "RUN that update started from to fold them in again)"
        )
    # the ids as every other path reads them (stripped, not empty, no control character):
    # a store written through the Python FeedbackStore could hold " u0 " (a new user beside
    # "u0"), "" or "a\nb", which went into the RUN's user ids as they were
    from metarec.types import id_to_str

    for col in ("user_id", "item_id"):
        null = fb[col].isna().to_numpy()
        if null.any():
            # a hand-made store's NULL id read as the id "nan" (or "None")
            raise MetarecError(
                f"feedback: row {int(np.argmax(null)) + 1}: {col} is missing (NULL) in "
                f"{int(null.sum())} rows"
            )
        clean = []
        for pos, raw in enumerate(fb[col].astype(str)):
            try:
                clean.append(id_to_str(raw))
            except ValueError as err:
                raise MetarecError(f"feedback: row {pos + 1}: {col} {raw!r}: {err}") from None
        fb[col] = clean
    item_idx = pred.items.lookup_or_missing(fb["item_id"].astype(str).to_numpy(object))
    known = item_idx >= 0
    n_unknown = int((~known).sum())
    if n_unknown and known.any():
        # the catalogue is the fit's: an update cannot add items, so these rows can never
        # be used; the count in the summary alone went unnoticed
        first = str(fb["item_id"][~known].iloc[0])
        n_items = len(pd.unique(fb["item_id"][~known]))
        warnings.warn(
            f"feedback: {n_unknown} row(s) on {n_items} item(s) outside the RUN's catalogue "
            f"(first {first!r}) are left out: an update keeps the fitted catalogue (fit "
            "again with those items in the items file to use them)",
            stacklevel=2,
        )
    fb, item_idx = fb[known].reset_index(drop=True), item_idx[known]
    n_fresh, fresh = int(fresh.sum()), fresh[known]
    if fb.empty:
        raise MetarecError(f"feedback: all {n_unknown} rows name items outside the catalogue")
    if not fresh.any():
        raise MetarecError(
            f"feedback: all {n_fresh} rows stored since the update that wrote this RUN name "
            "items outside the catalogue: nothing new to update from"
        )
    # the values of the rows used, once the rows left out are: one out-of-scale row on an
    # item outside the catalogue (another run's, in a shared store) refused the whole
    # update, though it would never be used (probe 141); the first bad row is named
    ratings = fb["rating"].to_numpy(np.float64)
    try:
        pred.check_values(ratings, what)
    except MetarecError as err:
        # the row check_values names: a non-finite value first, as it says that first
        bad = ~np.isfinite(ratings)
        if not bad.any():
            bad = np.isin(ratings, pred.unfit_values(ratings))
        first = int(np.flatnonzero(bad)[0])
        raise MetarecError(
            f"{err} (first: user {fb['user_id'][first]!r}, item {fb['item_id'][first]!r})"
        ) from None
    user_ids = fb["user_id"].astype(str).to_numpy(object)
    new = [u for u in pd.unique(user_ids) if u not in pred.users]
    users = IdMap(np.concatenate([pred.users.ids, np.asarray(new, dtype=object)]))
    user_idx = users.indices(user_ids, "user_id")
    # rows without a time are newer than everything fitted, in the order they were stored
    train = pred.train
    ts = fb["timestamp"] if "timestamp" in fb.columns else pd.Series([pd.NA] * len(fb))
    ts = ts.astype("Int64")
    # after the stored timed rows too, as the server places them (an untimed row counts
    # as newest): from the training rows' end alone, a timed row stamped later than the
    # training data came after the untimed ones, and past max_support other rows were cut
    newest = [int(train.timestamp.max())] if len(train) else []
    if ts.notna().any():
        newest.append(int(ts.max()))
    start = max(newest) + 1 if newest else 0
    filled = np.where(ts.isna(), start + np.arange(len(fb)), ts.fillna(0).to_numpy(np.int64))
    dom = _item_domain_codes(pred)
    rows = Interactions(
        user_idx, item_idx, fb["rating"].to_numpy(np.float32), filled, dom[item_idx]
    )
    # one row per (user, item) of the feedback: its newest, by the server's rule
    # (feedback.newest_per_item: untimed rows count as newest, then the largest timestamp,
    # then the later stored); it was the later stored one, whatever its timestamp
    n_items = len(pred.items)
    fb_key = user_idx.astype(np.int64) * n_items + item_idx  # (n_fb,)
    untimed = ts.isna().to_numpy()
    order = np.lexsort((np.arange(len(fb_key)), filled, untimed, fb_key))
    ends = np.r_[fb_key[order][1:] != fb_key[order][:-1], True]  # last of each key group
    rows = rows.take(np.sort(order[ends]))
    # then the feedback replaces the training rows of the same (user, item), whatever
    # their times: the rule serve and predict follow (a support row replaces the
    # training row of its item), so the updated model trains on the rating the service
    # adapts on. (Keeping the newer by timestamp, tried, parted the two paths, and
    # dropped feedback silently where the clocks differ: milliseconds against seconds,
    # or a log without times, whose timestamps are row order.)
    tr_key = train.user_idx.astype(np.int64) * n_items + train.item_idx
    replaced = np.isin(tr_key, fb_key)
    merged = Interactions.concat([train.take(~replaced), rows])
    counts = {
        "feedback_rows": len(feedback),
        # the rows after the mark of an earlier update of this RUN (all, without one)
        "feedback_rows_new": n_fresh,
        "feedback_rows_unknown_item": n_unknown,
        # the rows folded in: one per (user, item), its newest; the stored count above
        # includes the older repeats, which read as if they were folded in too
        "feedback_rows_used": len(rows),
        # users with new rows: those the update emphasises
        "feedback_users": int(len(np.unique(user_idx[fresh]))),
        "new_users": len(new),
        # training rows only (feedback rows that repeat an item are not counted here), and
        # those of the new rows' (user, item) pairs: after an earlier update the rows it
        # folded in replace themselves in this RUN's log, with the values they hold
        "replaced_training_rows": int(np.isin(tr_key, fb_key[fresh]).sum()),
    }
    return users, merged, np.unique(user_idx[fresh]), counts


def update(
    pred: Predictor,
    feedback: pd.DataFrame,
    cfg: UpdateConfig | None = None,
    what: str = "feedback",
    store: str | None = None,
) -> tuple[Predictor, dict]:
    """A new Predictor with the feedback folded in and meta-training continued (``what``
    names the feedback's source in a refusal of its values).

    ``store``: the id of the store ``feedback`` is (``FeedbackStore.store_id``; its frame
    holds ``seq``). The record then keeps the last row read, and an update of the result
    from the same store emphasises only the users with rows stored after it."""
    from metarec.model import MetaRecommender, _as_likes, _in_rating_units, episode_sizes

    cfg = cfg or UpdateConfig()
    _check_meta(pred.info)
    earlier = pred.info.get("updates") or ([pred.info["update"]] if pred.info.get("update") else [])
    marked = store is not None and "seq" in feedback.columns and len(feedback) > 0
    since, digest = _folded_through(earlier, store) if marked else (0, None)
    if since and _row_digest(feedback, since) != digest:
        # the row the earlier update read last is gone or another: a store restored from
        # an older copy numbers new rows from its own end again, and rows the RUN never
        # saw would count as folded in
        said = (
            "is not the row it read (the store was restored from an older copy, or rewritten)"
            if digest is not None
            # a mark from before digests were recorded, or a hand-edited record
            else "cannot be checked (the RUN recorded no digest of it)"
        )
        warnings.warn(
            f"feedback: the store's row {since}, the last an earlier update of this RUN "
            f"read, {said}: every stored row counts as new",
            stacklevel=2,
        )
        since = 0
    users, train, fb_users, report = merge_feedback(pred, feedback, what, since)
    if marked:
        last = int(feedback["seq"].max())
        report = {
            **report,
            "feedback_store": store,
            "feedback_through": last,
            "feedback_through_row": _row_digest(feedback, last),
        }
    n_old, n_new = len(pred.users), len(users)
    state_cfg, tensors = pred.model.state()
    tensors = dict(tensors)
    # user_side has one extra zero row at the end (the unknown user): new users go before it
    us = tensors["features.user_side"]
    tensors["features.user_side"] = torch.cat(
        [us[:n_old], us.new_zeros(n_new - n_old, us.shape[1]), us[n_old:]]
    )
    state_cfg = {**state_cfg, "n_users": n_new}
    model = MetaRecommender.from_state(state_cfg, tensors, train)
    # how fit encoded its users file: kept for users who bring theirs later (the RUN's
    # meta.json, not its model state, holds it)
    model.user_features_ = pred.model.user_features_
    mcfg = model.config
    k, q = episode_sizes(train, mcfg.k_shot, mcfg.n_query)  # as fit drew its episodes
    split = Split("update", train, (), (), cfg.seed, k, q)
    fb_split = dataclasses.replace(split, train=train.take(np.isin(train.user_idx, fb_users)))
    for key in ("rating", "rank"):
        part = getattr(model, f"{key}_")
        if part is None:
            continue
        head = part.learner.scorer.cfg.head
        tcfg = dataclasses.replace(mcfg.train, meta_batch=cfg.meta_batch, seed=cfg.seed)
        # the training tasks fit used ("auto": newest-items tasks for an item cold-start fit)
        tcfg = resolve_episodes(tcfg, part.new_items)
        s_all, s_fb = split, fb_split
        if head == "rating":  # in the units the rating model trains on (rating_unit)
            s_all = _in_rating_units(split, model.rating_unit, model.rating_offset)
            s_fb = _in_rating_units(fb_split, model.rating_unit, model.rating_offset)
        if head == "binary":
            # the ID dropout fit trained with (cold_rank_id_dropout for an item cold-start fit)
            tcfg = mcfg.rank_train(tcfg, held_out=part.new_items)
            # as fit does: likes (rating >= threshold; implicit labels as they are)
            s_all = _as_likes(split, model._like_threshold())
            s_fb = _as_likes(fb_split, model._like_threshold())
        device = str(model.features_.item_text.device)
        params, losses = _continue(model, part, s_all, s_fb, tcfg, cfg, device=device)
        setattr(model, f"{key}_", dataclasses.replace(part, params=params))
        report[f"{key}_feedback_loss_in_sample"] = losses
    # every setting the result depends on (two seeds gave two models with one record),
    # and the weights it started from when those were an export's (dequantised)
    record = {
        **report,
        **dataclasses.asdict(cfg),
        **({"from_export": pred.exported} if pred.exported else {}),
    }
    # every update in order ("update" is the latest alone, and a second update's record
    # replaced the first's)
    info = {
        **{k: v for k, v in pred.info.items() if k != "item_domains"},
        **_log_counts(pred, users, train),
        "update": record,
        "updates": [*earlier, record],
    }
    return Predictor(model, users, pred.items, pred.item_domain, train, info), report


def _row_digest(feedback: pd.DataFrame, seq: int) -> str | None:
    """sha256 (16 hex digits) of the stored row numbered ``seq`` (its user, item, rating
    and timestamp), or None where there is none: what tells the row an update read last
    from another row that took its number."""
    import hashlib

    row = feedback[feedback["seq"] == seq]
    if row.empty:
        return None
    r = row.iloc[0]
    ts = r.get("timestamp")
    ts = None if ts is None or pd.isna(ts) else int(ts)
    text = f"{r['user_id']}\x1f{r['item_id']}\x1f{float(r['rating'])!r}\x1f{ts}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _folded_through(records: list, store: str | None) -> tuple[int, str | None]:
    """The last row of ``store`` that an update in ``records`` (the RUN's ``updates``, oldest
    first) folded in, with the digest of it the newest such record holds
    (:func:`_row_digest`; None where it holds none); (0, None) where none read it (or
    ``store`` is None: a store with no id)."""
    marks = [
        (r["feedback_through"], r.get("feedback_through_row"))
        for r in records
        if isinstance(r, dict)
        and store is not None
        and r.get("feedback_store") == store
        and type(r.get("feedback_through")) is int  # a hand-edited meta.json: no mark
    ]
    # the newest record of the largest mark: an update that found nothing to trust at a
    # mark (no digest: a RUN from before digests) records the same mark with its digest,
    # and taking the first record warned and recounted every row at each update after
    # (mutation audit 162)
    best = max((m for m, _ in marks), default=0)
    return next(((m, d) for m, d in reversed(marks) if m == best), (0, None))


def _log_counts(pred: Predictor, users, train) -> dict:
    """dataset_info's counts of the merged log (interactions, users, observed ratings,
    per-domain counts, ...): the RUN's meta.json, and serve's /info, kept the fitted log's
    (1,098 interactions and no 1-star ratings after update had merged 40 rows with 1s).
    The side-column lists are the fit's and stay as they are."""
    from metarec.data import dataset_info
    from metarec.types import Dataset

    info = pred.info
    view = Dataset(
        name=str(info.get("name", "fit")),
        interactions=train,
        users=users,
        items=pred.items,
        feedback=info.get("feedback", "explicit"),
        rating_range=tuple(float(v) for v in info.get("rating_range", (0.0, 1.0))),
        has_time=info.get("time") == "unix_seconds",
        domains=tuple(_domain_names(pred)),
    )
    fresh = dataset_info(view)
    # a domain only unrated items had gets a code (_domain_names) but is listed only once
    # the merged log has rows in it: trailing empty ones are left out (the names are by
    # code, so one with rows keeps any empty one before it)
    doms, n_fitted = fresh.get("domains") or [], len(info.get("domains") or []) or 1
    while len(doms) > n_fitted and not doms[-1]["interactions"]:
        doms.pop()
    return {k: v for k, v in fresh.items() if not k.endswith("_columns")}


@cpu_deterministic
def _continue(
    model, part, s_all: Split, s_fb: Split, tcfg: TrainConfig, cfg: UpdateConfig, *, device: str
):
    """Adam on the part's meta-parameters for cfg.steps steps; (params, loss before/after).
    ``device`` (where the model is) is read by :func:`cpu_deterministic` only."""
    learner, feats = part.learner, model.features_
    known = torch.from_numpy(model.known_items_)
    head = learner.scorer.cfg.head
    n_items = model.n_items_
    all_sampler = _TaskSampler(s_all, head, n_items, tcfg)
    try:
        # the feedback users' negatives: any item trained on, not only the feedback's own
        fb_sampler = _TaskSampler(s_fb, head, n_items, tcfg, negatives_of=all_sampler)
    except MetarecError:  # no feedback user has 2+ rows: nothing of their own to learn
        fb_sampler = None
    n_fb = round(cfg.meta_batch * cfg.feedback_share) if fb_sampler else 0
    probe = _probe_episodes(fb_sampler, head, n_items, tcfg) if fb_sampler else []

    def probe_loss(p) -> float | None:
        return evaluate_loss(learner, p, feats, probe, known) if probe else None

    params = {k: v.detach().clone().requires_grad_(True) for k, v in part.params.items()}
    before = probe_loss(params)
    opt = torch.optim.Adam(list(params.values()), lr=cfg.outer_lr)
    rng = np.random.default_rng(cfg.seed)
    for _ in range(cfg.steps):
        episodes = fb_sampler.sample(n_fb, rng) if n_fb else []
        if cfg.meta_batch > n_fb:
            episodes += all_sampler.sample(cfg.meta_batch - n_fb, rng)
        x = build_inputs(
            learner.scorer,
            feats,
            pad_episodes(episodes),
            known,
            id_dropout=tcfg.id_dropout,
            rng=rng,
        )
        loss, grads = learner.meta_grads(params, x)
        if not torch.isfinite(loss):
            raise MetarecError(f"update: meta-loss is {float(loss)} (lower --lr)")
        for k, p in params.items():
            p.grad = grads[k]
        if tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), tcfg.grad_clip)
        opt.step()
    out = {k: v.detach().clone() for k, v in params.items()}
    # the loss is checked before each step, so the last step's result was not: one step
    # at --lr 1e30 wrote NaN weights with exit 0
    bad = [k for k, v in out.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    after = probe_loss(out)
    if bad or (after is not None and not math.isfinite(after)):
        what = f"weights {', '.join(bad[:3])} are not finite" if bad else f"loss is {after}"
        raise MetarecError(f"update: after the last step the {what} (lower --lr)")
    return out, {"before": before, "after": after}


def _probe_episodes(sampler, head: str, n_items: int, tcfg: TrainConfig) -> list:
    """Each feedback user's history in time order: first K as support, the rest as query."""
    rng = np.random.default_rng([tcfg.seed, 7])
    out = []
    for user, items, ratings in sampler.histories:
        ks = min(sampler.k, len(items) - 1)
        out.append(
            make_episode(
                user,
                items[:ks],
                ratings[:ks],
                items[ks:],
                ratings[ks:],
                head=head,
                n_items=n_items,
                rng=rng,
                n_negatives=tcfg.n_negatives,
                positive_threshold=tcfg.positive_threshold,
                exclude=items,
                negative_pool=sampler.negative_pool,
            )
        )
    return out


def update_run(
    run: str | Path, feedback_db: str | Path, out: str | Path, cfg: UpdateConfig | None = None
) -> dict:
    """``metarec update``: load RUN, read the feedback store, write RUN2 (atomically)."""
    from metarec.artifacts import check_derived_run, check_run_target
    from metarec.predictor import _smoke_test
    from metarec.serve.feedback import open_store

    check_derived_run(out, run, "update")
    check_run_target(out)  # before the training, as fit checks it
    pred = Predictor.load(run)
    store = open_store(feedback_db)
    other = store.written_for_other(pred.feedback_tag)
    if other is not None:
        # rows stored by a run on other feedback fit this one's values by chance at best
        warnings.warn(other, stacklevel=2)
    # the id and the rows in one read: a store made again between two reads gave the new
    # store's id to the old store's rows
    store_id, frame = store.snapshot()
    # rows stored before /feedback checked values would otherwise surface as "meta-loss
    # is inf": merge_feedback names them (those it uses: rows on items outside the
    # catalogue are left out first)
    new, report = update(pred, frame, cfg, what=f"{feedback_db}: stored feedback", store=store_id)
    _smoke_test(new.model)  # as a load would: nothing is written that cannot serve
    new.save(out)
    # each part's member count, as fit's summary gives it: every member was updated
    members = {
        f"{key}_members": part.members
        for key, part in (("rating", new.model.rating_), ("rank", new.model.rank_))
        if part is not None
    }
    return {"run": str(out), "from": str(run), **report, **members}
