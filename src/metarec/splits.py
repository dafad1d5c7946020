"""Cold-start protocols: Dataset -> Split (training interactions + valid/test episodes).

Every protocol is a deterministic function of the dataset and ``seed`` (a numpy Generator
is used only where no timestamps decide). Within a user, "first" and "next" always mean
time order, ties broken by position in ``ds.interactions`` (a stable sort).

Protocols (registry :data:`PROTOCOLS`, entry point :func:`make_split`):

* ``warm``           sampled users keep their history in train; their last Q events are the
                     query, the K events just before are the support (also in train).
* ``user-cold``      the newest users (by first interaction) are held out entirely;
                     support = their first K events, query = the next Q.
* ``item-cold``      the newest items are removed from train; per user, support = first K
                     events on warm items, query = first Q events on held-out items.
* ``user-item-cold`` both: held-out users and items never reach train; the query holds
                     only held-out items.
* ``cross-domain``   users active in both domains; a share of them is made cold in the
                     target domain, their source history stays in train.

Held-out sets are disjoint between validation and test. An episode needs exactly K
support events and at least one query event; held-out users without one are *dropped*
(they are still kept out of train) and counted in ``Split.summary``.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.atomic import (
    check_can_create,
    refuse_stdout_folder,
    replace_dir,
    staging_dir,
    sweep_staging,
)
from metarec.types import MAX_SEED, Dataset, Interactions, MetarecError, Split, Task

# --- helpers over index arrays -------------------------------------------------------------


def _check_shots(ds: Dataset, k_shot: int, n_query: int) -> None:
    for name, v in (("k_shot", k_shot), ("n_query", n_query)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise MetarecError(f"split: {name} must be an integer >= 1, got {v!r}")
    if len(ds.interactions) == 0:
        raise MetarecError(f"split: dataset {ds.name!r} has no interactions")
    longest = int(np.bincount(ds.interactions.user_idx).max())
    if longest <= k_shot:
        raise MetarecError(
            f"split: k_shot={k_shot} but the longest user history in {ds.name!r} has "
            f"{longest} interactions, so no episode (K support + >= 1 query) is possible"
        )


def _n_of(frac: float, n: int, name: str) -> int:
    if isinstance(frac, bool) or not isinstance(frac, int | float | np.integer | np.floating):
        # "0.1" or None: a bare TypeError from the comparison below
        raise MetarecError(f"split: {name} must be a number in [0, 1), got {frac!r}")
    if not 0.0 <= frac < 1.0:
        raise MetarecError(f"split: {name} must be in [0, 1), got {frac!r}")
    # At least one entity for any positive share, so tiny data still gets a set.
    return max(1, round(frac * n)) if frac > 0 else 0


def _hold_out(
    ordered: np.ndarray, valid_frac: float, test_frac: float, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut an oldest-first array into (kept, valid, test): test = the last share.

    Returns index arrays; valid and test are disjoint, and at least one entity is kept.
    """
    n = len(ordered)
    n_test = _n_of(test_frac, n, "test_frac")
    n_valid = _n_of(valid_frac, n, "valid_frac")
    if n_test == 0 and n_valid == 0:
        # test_frac = 0 is allowed for internal validation-only splits (fit's early stopping)
        raise MetarecError("split: test_frac and valid_frac are both 0: nothing is held out")
    if n_test + n_valid >= n:
        if n_test == 0 and n_valid > 1:
            # fit's own validation hold-out asked for every entity: the fraction is at fault
            raise MetarecError(
                f"valid_frac {valid_frac:g} holds out {n_valid} of the log's {n} {what} "
                f"for validation and leaves none to train on; lower valid_frac"
            )
        if n_test == 0:
            # fit's own validation hold-out (no test part): lowering a fraction cannot help
            # when one validation entity is already all there is
            raise MetarecError(
                f"the log has {n} {what}: fit holds out its newest {what} to validate on "
                f"(early stopping, blend weights) and needs at least 2"
            )
        raise MetarecError(
            f"split: {n} {what} cannot give {n_test} test + {n_valid} validation {what} "
            "and keep any for training; lower test_frac/valid_frac"
        )
    return (
        ordered[: n - n_test - n_valid],
        ordered[n - n_test - n_valid : n - n_test],
        ordered[n - n_test :],
    )


def _time_order(inter: Interactions) -> np.ndarray:
    """Row order by (timestamp, position): the stable time sort."""
    return np.lexsort((np.arange(len(inter)), inter.timestamp))


def _by_first_appearance(keys: np.ndarray, inter: Interactions) -> np.ndarray:
    """Distinct keys ordered by their first event in time (oldest first)."""
    uniq, first = np.unique(keys[_time_order(inter)], return_index=True)
    return uniq[np.argsort(first, kind="stable")]


def _newest_last(
    keys: np.ndarray, inter: Interactions, has_time: bool, rng: np.random.Generator
) -> np.ndarray:
    """Entities (users or items) ordered so that the 'newest' come last.

    With times: by first interaction. Without (timestamps are only log positions, which
    need not say anything about arrival): a seeded random order.
    """
    if has_time:
        return _by_first_appearance(keys, inter)
    return rng.permutation(np.unique(keys))


def _user_time_order(inter: Interactions, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masked row indices sorted by (user, time, position), and where each user's run
    starts: (m,) row indices, (m,) bool (True at the first row of a user)."""
    idx = np.flatnonzero(mask)
    order = idx[np.lexsort((idx, inter.timestamp[idx], inter.user_idx[idx]))]
    users = inter.user_idx[order]
    return order, np.r_[len(order) > 0, users[1:] != users[:-1]].astype(bool)


def _rank_in_user(inter: Interactions, mask: np.ndarray, from_end: bool = False) -> np.ndarray:
    """(n,) int64: each masked row's 0-based rank among its user's masked rows in time
    order (counted from the latest when ``from_end``); -1 for rows outside the mask."""
    out = np.full(len(inter), -1, dtype=np.int64)
    order, first = _user_time_order(inter, mask)
    if len(order) == 0:
        return out
    starts = np.flatnonzero(first)
    run = np.cumsum(first) - 1  # (m,) which user-run each sorted row belongs to
    rank = np.arange(len(order)) - starts[run]
    if from_end:
        lengths = np.diff(np.r_[starts, len(order)])
        rank = lengths[run] - 1 - rank
    out[order] = rank
    return out


def _rows_by_user(inter: Interactions, mask: np.ndarray) -> dict[int, np.ndarray]:
    """Masked row indices grouped by user index, each group in time order."""
    order, first = _user_time_order(inter, mask)
    groups = np.split(order, np.flatnonzero(first)[1:])
    return {int(inter.user_idx[g[0]]): g for g in groups if len(g)}


def _episodes(
    inter: Interactions,
    users: np.ndarray,
    support: np.ndarray,
    query: np.ndarray,
    k_shot: int,
) -> tuple[tuple[Task, ...], int]:
    """One Task per user in ``users`` that has exactly K support rows and >= 1 query row.

    ``support``/``query`` are disjoint row masks. A query row on an item the support
    already holds (a log kept with its re-ratings: ``preprocess.dedupe = false``) is left
    out: the model was given that item's rating, and the full ranking, which leaves the
    support out, counted it relevant and a certain miss (``kcurve_tasks`` drops them too).
    Returns the tasks (by user index) and how many users had no episode.
    """
    assert not np.any(support & query), "support and query rows overlap"
    s_rows, q_rows = _rows_by_user(inter, support), _rows_by_user(inter, query)
    tasks = []
    for u in np.sort(users).tolist():
        s, q = s_rows.get(u), q_rows.get(u)
        if s is None or q is None or len(s) < k_shot:
            continue
        q = q[~np.isin(inter.item_idx[q], inter.item_idx[s])]
        if not len(q):
            continue
        tasks.append(Task(user_idx=u, support=inter.take(s), query=inter.take(q)))
    return tuple(tasks), len(users) - len(tasks)


def _finish(
    ds: Dataset,
    protocol: str,
    train: Interactions,
    valid: tuple[Task, ...],
    test: tuple[Task, ...],
    *,
    k_shot: int,
    n_query: int,
    valid_frac: float,
    test_frac: float,
    seed: int,
    params: dict | None = None,
    cold_item_idx: np.ndarray | None = None,
    cold_parts: tuple[np.ndarray, np.ndarray] | None = None,
    source_domain: int | None = None,
    target_domain: int | None = None,
    **extra,
) -> Split:
    """The Split every protocol returns, with its JSON summary (counts + parameters).

    ``params`` adds protocol-specific parameters to the common ones; ``extra`` adds counts;
    ``cold_item_idx`` becomes ``Split.cold_items``; ``cold_parts`` = (validation items, test
    items) become ``valid_cold_items`` / ``test_cold_items``.
    """

    def sizes(tasks, part):
        return int(sum(len(getattr(t, part)) for t in tasks))

    common = dict(
        k_shot=k_shot, n_query=n_query, valid_frac=valid_frac, test_frac=test_frac, seed=seed
    )
    summary = {
        "protocol": protocol,
        "dataset": ds.name,
        "params": {**(params or {}), **common},
        "train_interactions": int(len(train)),
        "train_users": int(len(np.unique(train.user_idx))),
        "train_items": int(len(np.unique(train.item_idx))),
        "valid_users": len(valid),
        "test_users": len(test),
        "valid_support": sizes(valid, "support"),
        "valid_query": sizes(valid, "query"),
        "test_support": sizes(test, "support"),
        "test_query": sizes(test, "query"),
        **{k: int(v) if isinstance(v, np.integer) else v for k, v in extra.items()},
    }
    kw = {} if cold_item_idx is None else {"cold_items": cold_item_idx}
    if cold_parts is not None:
        kw["valid_cold_items"] = np.sort(cold_parts[0]).astype(np.int64)
        kw["test_cold_items"] = np.sort(cold_parts[1]).astype(np.int64)
    return Split(
        protocol=protocol,
        train=train,
        valid=valid,
        test=test,
        seed=seed,
        k_shot=k_shot,
        n_query=n_query,
        source_domain=source_domain,
        target_domain=target_domain,
        summary=summary,
        **kw,
    )


def _need_test(test: tuple[Task, ...], protocol: str, k_shot: int, why: str) -> None:
    if not test:
        raise MetarecError(
            f"split {protocol}: no test episode is possible with k_shot={k_shot} ({why})"
        )


# --- protocols -----------------------------------------------------------------------------


def warm(
    ds: Dataset,
    k_shot: int,
    n_query: int,
    valid_frac: float = 0.1,
    test_frac: float = 0.2,
    seed: int = 0,
) -> Split:
    """Warm users, temporal hold-out.

    Eligible users have more than K interactions; a seeded share becomes validation/test.
    For each, the query is the last min(Q, n - K) interactions and the support the K just
    before them. Train = everything except the query rows (the support stays in train).
    """
    _check_shots(ds, k_shot, n_query)
    inter = ds.interactions
    rng = np.random.default_rng(seed)
    counts = np.bincount(inter.user_idx, minlength=ds.n_users)
    # one seeded order of every user, then the eligible ones in it: a recut for another K
    # (the K-curve) keeps the same order, so its held-out users overlap this cut's (a
    # permutation of the eligible users alone reshuffled them whenever the pool changed)
    perm = rng.permutation(ds.n_users)
    eligible = perm[counts[perm] > k_shot]
    _, valid_u, test_u = _hold_out(eligible, valid_frac, test_frac, "users")
    held = np.isin(inter.user_idx, np.concatenate([valid_u, test_u]))
    from_end = _rank_in_user(inter, held, from_end=True)
    # (n,) query size of the row's user; Q capped at the log's length first: a Q past
    # int64 ("the next Q, or what remains") overflowed np.minimum, a traceback
    n_q = np.minimum(min(n_query, len(inter)), counts[inter.user_idx] - k_shot)
    query = held & (from_end >= 0) & (from_end < n_q)
    support = held & (from_end >= n_q) & (from_end < n_q + k_shot)
    train = inter.take(~query)
    valid, dropped_v = _episodes(inter, valid_u, support, query, k_shot)
    test, dropped_t = _episodes(inter, test_u, support, query, k_shot)
    if test_frac > 0:  # test_frac = 0: a validation-only split, as in user-cold
        _need_test(test, "warm", k_shot, "no user has more than K interactions")
    return _finish(
        ds,
        "warm",
        train,
        valid,
        test,
        k_shot=k_shot,
        n_query=n_query,
        valid_frac=valid_frac,
        test_frac=test_frac,
        seed=seed,
        eligible_users=len(eligible),
        dropped_valid_users=dropped_v,
        dropped_test_users=dropped_t,
    )


def user_cold(
    ds: Dataset,
    k_shot: int,
    n_query: int,
    valid_frac: float = 0.1,
    test_frac: float = 0.2,
    seed: int = 0,
) -> Split:
    """New users: the newest users (by first interaction) are held out of train entirely.

    Support = a held-out user's first K interactions, query = the next Q (or what remains);
    users with <= K interactions are dropped from the episodes. Without timestamps the
    held-out users are a seeded random share.
    """
    _check_shots(ds, k_shot, n_query)
    inter = ds.interactions
    rng = np.random.default_rng(seed)
    ordered = _newest_last(inter.user_idx, inter, ds.has_time, rng)
    _, valid_u, test_u = _hold_out(ordered, valid_frac, test_frac, "users")
    held = np.isin(inter.user_idx, np.concatenate([valid_u, test_u]))
    rank = _rank_in_user(inter, held)
    support = held & (rank >= 0) & (rank < k_shot)
    query = held & (rank >= k_shot) & (rank < k_shot + n_query)
    train = inter.take(~held)
    valid, dropped_v = _episodes(inter, valid_u, support, query, k_shot)
    test, dropped_t = _episodes(inter, test_u, support, query, k_shot)
    if test_frac > 0:  # test_frac = 0: a validation-only split (fit's internal early stopping)
        _need_test(
            test, "user-cold", k_shot, f"all {len(test_u)} test users have <= K interactions"
        )
    return _finish(
        ds,
        "user-cold",
        train,
        valid,
        test,
        k_shot=k_shot,
        n_query=n_query,
        valid_frac=valid_frac,
        test_frac=test_frac,
        seed=seed,
        held_out_valid_users=len(valid_u),
        held_out_test_users=len(test_u),
        dropped_valid_users=dropped_v,
        dropped_test_users=dropped_t,
        by_time=ds.has_time,
    )


def _cold_item_sets(
    ds: Dataset, valid_frac: float, test_frac: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    inter = ds.interactions
    ordered = _newest_last(inter.item_idx, inter, ds.has_time, rng)
    _, valid_i, test_i = _hold_out(ordered, valid_frac, test_frac, "items")
    return valid_i, test_i


def item_cold(
    ds: Dataset,
    k_shot: int,
    n_query: int,
    valid_frac: float = 0.1,
    test_frac: float = 0.2,
    seed: int = 0,
) -> Split:
    """New items: the newest items (by first interaction) never reach train.

    Only items with at least one interaction can be held out (a catalogue item nobody
    rated is cold too, but there is nothing to test it on). Episodes are per user: support = the user's first K interactions with warm items (these
    stay in train; the user is warm), query = their first Q interactions with the held-out
    items of that part (validation or test). ``Split.cold_items`` = both held-out sets.
    """
    _check_shots(ds, k_shot, n_query)
    inter = ds.interactions
    rng = np.random.default_rng(seed)
    valid_i, test_i = _cold_item_sets(ds, valid_frac, test_frac, rng)
    cold = np.isin(inter.item_idx, np.concatenate([valid_i, test_i]))
    warm_rank = _rank_in_user(inter, ~cold)
    support = (warm_rank >= 0) & (warm_rank < k_shot)
    train = inter.take(~cold)
    parts = []
    for items in (valid_i, test_i):
        on = np.isin(inter.item_idx, items)
        rank = _rank_in_user(inter, on)
        query = on & (rank >= 0) & (rank < n_query)
        users = np.unique(inter.user_idx[on])
        parts.append((*_episodes(inter, users, support, query, k_shot), len(users)))
    (valid, dropped_v, cand_v), (test, dropped_t, cand_t) = parts
    if test_frac > 0:  # test_frac = 0: a validation-only split (fit's internal early stopping)
        _need_test(test, "item-cold", k_shot, "no user of a test item has K warm interactions")
    return _finish(
        ds,
        "item-cold",
        train,
        valid,
        test,
        k_shot=k_shot,
        n_query=n_query,
        valid_frac=valid_frac,
        test_frac=test_frac,
        seed=seed,
        cold_item_idx=np.sort(np.concatenate([valid_i, test_i])).astype(np.int64),
        cold_parts=(valid_i, test_i),
        cold_items=len(valid_i) + len(test_i),
        valid_cold_items=len(valid_i),
        test_cold_items=len(test_i),
        dropped_valid_users=dropped_v,
        dropped_test_users=dropped_t,
        candidate_valid_users=cand_v,
        candidate_test_users=cand_t,
        by_time=ds.has_time,
    )


def user_item_cold(
    ds: Dataset,
    k_shot: int,
    n_query: int,
    valid_frac: float = 0.1,
    test_frac: float = 0.2,
    seed: int = 0,
) -> Split:
    """New users meeting new items: train holds neither the held-out users nor items.

    Users and items are held out as in :func:`user_cold` and :func:`item_cold`. For a
    held-out user, support = their first K interactions with warm items, query = their
    first Q interactions with the held-out items of the same part (test users with test
    items, validation users with validation items).
    """
    _check_shots(ds, k_shot, n_query)
    inter = ds.interactions
    rng = np.random.default_rng(seed)
    ordered = _newest_last(inter.user_idx, inter, ds.has_time, rng)
    _, valid_u, test_u = _hold_out(ordered, valid_frac, test_frac, "users")
    valid_i, test_i = _cold_item_sets(ds, valid_frac, test_frac, rng)
    cold_user = np.isin(inter.user_idx, np.concatenate([valid_u, test_u]))
    cold_item = np.isin(inter.item_idx, np.concatenate([valid_i, test_i]))
    warm_rank = _rank_in_user(inter, cold_user & ~cold_item)
    support = (warm_rank >= 0) & (warm_rank < k_shot)
    train = inter.take(~cold_user & ~cold_item)
    parts = []
    for users, items in ((valid_u, valid_i), (test_u, test_i)):
        on = np.isin(inter.user_idx, users) & np.isin(inter.item_idx, items)
        rank = _rank_in_user(inter, on)
        query = on & (rank >= 0) & (rank < n_query)
        parts.append(_episodes(inter, users, support, query, k_shot))
    (valid, dropped_v), (test, dropped_t) = parts
    _need_test(
        test,
        "user-item-cold",
        k_shot,
        "no test user has K warm interactions and one on a test item",
    )
    return _finish(
        ds,
        "user-item-cold",
        train,
        valid,
        test,
        k_shot=k_shot,
        n_query=n_query,
        valid_frac=valid_frac,
        test_frac=test_frac,
        seed=seed,
        cold_item_idx=np.sort(np.concatenate([valid_i, test_i])).astype(np.int64),
        cold_parts=(valid_i, test_i),
        held_out_valid_users=len(valid_u),
        held_out_test_users=len(test_u),
        cold_items=len(valid_i) + len(test_i),
        valid_cold_items=len(valid_i),
        test_cold_items=len(test_i),
        dropped_valid_users=dropped_v,
        dropped_test_users=dropped_t,
        by_time=ds.has_time,
    )


def cross_domain(
    ds: Dataset,
    source: str,
    target: str,
    k_shot: int,
    n_query: int,
    valid_frac: float = 0.1,
    test_frac: float = 0.2,
    seed: int = 0,
    support_in_train: bool = False,
) -> Split:
    """Users known in ``source`` who are cold in ``target``.

    Overlapping users (interactions in both domains) are shuffled with ``seed``; a share
    becomes validation/test. For them, support = first K target interactions, query = the
    next Q. Train = all source interactions + target interactions of the other users
    (+ the held-out users' supports when ``support_in_train``). Their remaining target
    interactions, and every interaction in a third domain, are left out (counted).
    """
    names = list(ds.domains)
    # stripped, as data cells, `recommend --domain` and an experiment's split are
    source, target = str(source).strip(), str(target).strip()
    for role, name in (("source", source), ("target", target)):
        if name not in names:
            # a domain the items file names but no row reaches is not unknown: it has
            # nothing to train or score on (probe 163)
            unrated = name in set(ds.item_domain_names().tolist())
            raise MetarecError(
                f"split cross-domain: {role} domain {name!r} "
                + ("has catalogue items but no interactions" if unrated else "is unknown")
                + f"; domains with interactions: {', '.join(names)}"
            )
    if source == target:
        raise MetarecError(f"split cross-domain: source and target are both {source!r}")
    _check_shots(ds, k_shot, n_query)
    inter = ds.interactions
    s_dom, t_dom = names.index(source), names.index(target)
    in_s, in_t = inter.domain == s_dom, inter.domain == t_dom
    overlap = np.intersect1d(inter.user_idx[in_s], inter.user_idx[in_t])
    if len(overlap) == 0:
        raise MetarecError(
            f"split cross-domain: no user has interactions in both {source!r} and {target!r}"
        )
    rng = np.random.default_rng(seed)
    _, valid_u, test_u = _hold_out(
        rng.permutation(overlap), valid_frac, test_frac, "overlapping users"
    )
    held = in_t & np.isin(inter.user_idx, np.concatenate([valid_u, test_u]))
    rank = _rank_in_user(inter, held)
    support = held & (rank >= 0) & (rank < k_shot)
    query = held & (rank >= k_shot) & (rank < k_shot + n_query)
    in_train = in_s | (in_t & ~held) | (support if support_in_train else False)
    train = inter.take(in_train)
    valid, dropped_v = _episodes(inter, valid_u, support, query, k_shot)
    test, dropped_t = _episodes(inter, test_u, support, query, k_shot)
    _need_test(
        test, "cross-domain", k_shot, f"no test user has more than K {target!r} interactions"
    )
    return _finish(
        ds,
        "cross-domain",
        train,
        valid,
        test,
        k_shot=k_shot,
        n_query=n_query,
        valid_frac=valid_frac,
        test_frac=test_frac,
        seed=seed,
        params=dict(source=source, target=target, support_in_train=support_in_train),
        source_domain=s_dom,
        target_domain=t_dom,
        overlapping_users=len(overlap),
        held_out_valid_users=len(valid_u),
        held_out_test_users=len(test_u),
        dropped_valid_users=dropped_v,
        dropped_test_users=dropped_t,
        other_domain_interactions_left_out=int((~in_s & ~in_t).sum()),
    )


PROTOCOLS: dict[str, Callable[..., Split]] = {
    "warm": warm,
    "user-cold": user_cold,
    "item-cold": item_cold,
    "user-item-cold": user_item_cold,
    "cross-domain": cross_domain,
}


def make_split(ds: Dataset, protocol: str, **kw) -> Split:
    """``PROTOCOLS[protocol](ds, **kw)``, with a clear error for an unknown name."""
    try:
        fn = PROTOCOLS[protocol]
    except KeyError:
        raise MetarecError(
            f"unknown split protocol {protocol!r}; known: {', '.join(PROTOCOLS)}"
        ) from None
    if not isinstance(ds, Dataset):
        raise MetarecError(f"split: expected a Dataset, got {type(ds).__name__}")
    seed = kw.get("seed", 0)
    if not (isinstance(seed, int | np.integer) and 0 <= seed <= MAX_SEED):
        raise MetarecError(f"split: seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    # the protocol's own keywords, named in one line: a missing k_shot or an unknown
    # keyword was Python's TypeError naming the internal function
    params = inspect.signature(fn).parameters
    needed = [
        n
        for n, p in list(params.items())[1:]
        if p.default is inspect.Parameter.empty and n not in kw
    ]
    unknown = [n for n in kw if n not in params]
    if needed or unknown:
        said = ([f"needs {', '.join(needed)}"] if needed else []) + (
            [f"takes no {', '.join(unknown)}"] if unknown else []
        )
        raise MetarecError(
            f"split protocol {protocol!r} {' and '.join(said)} (its keywords: "
            f"{', '.join(list(params)[1:])})"
        )
    return fn(ds, **kw)


# --- writing -------------------------------------------------------------------------------

SPLIT_FILES = (
    "train.csv",
    "valid_support.csv",
    "valid_query.csv",
    "test_support.csv",
    "test_query.csv",
    # columns item_id, part ("valid" / "test"); header only unless the protocol holds
    # items out
    "cold_items.csv",
    "summary.json",
)


def _followed(out: Path) -> Path:
    """A symlink's target, which a split replaces (the link stays, as for a RUN): the
    folder swap renamed the link itself away and left the old split where it pointed."""
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def check_split_target(out: Path, overwrite: bool = False) -> bool:
    """Whether ``out`` is an existing empty folder to fill; an error if writing a split
    there would replace something without ``overwrite`` (checked before the split is cut)."""
    refuse_stdout_folder(out, "a split")
    out = _followed(out)
    if out.is_dir():  # what a killed writer left inside, before the folder counts as empty
        sweep_staging(out, out.name)
    # An empty folder (made ahead by a job script, a mounted volume) holds nothing to lose.
    fill = out.is_dir() and not any(out.iterdir())
    if not out.exists():
        check_can_create(out)  # a parent that is a file: said before the cut, naming --out
    if out.exists() and not fill and not overwrite:
        what = "a folder that is not empty" if out.is_dir() else "not a folder"
        raise MetarecError(
            f"{out}: already exists and is {what} (give a new or empty folder, or pass "
            "overwrite (--overwrite) to replace it)"
        )
    if out.exists() and not fill and overwrite:
        # overwrite replaces an earlier split, nothing else: it replaced a file (the
        # command's own input log among them), a RUN or any folder without a word
        if not out.is_dir():
            raise MetarecError(f"{out}: is not a folder; overwrite replaces a split folder only")
        last = str(out).rstrip(os.sep).rsplit(os.sep, 1)[-1]
        if last in ("", ".", "..") or os.path.ismount(out):
            # replaced by a rename, which such a path cannot take ("Device or resource
            # busy: ." after the whole cut)
            raise MetarecError(
                f"{out}: a . or .. path or a mount point cannot be replaced; give its full "
                "path, or a folder inside it"
            )
        if not (out / "summary.json").is_file():
            raise MetarecError(
                f"{out}: is not a split folder (no summary.json); overwrite replaces an "
                "earlier split only, give a new or empty folder"
            )
        # files a split never writes (notes, a subfolder) were deleted with the folder
        foreign = sorted(
            p.name
            for p in out.iterdir()
            if p.name not in SPLIT_FILES and not p.name.startswith(f".{out.name}.~")
        )
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise MetarecError(
                f"{out}: is a split folder holding {len(foreign)} file(s) a split does not "
                f"write ({shown}); overwrite would delete them: move them, or give a new "
                "folder"
            )
    return fill


def write_split(
    split: Split, ds: Dataset, out_dir: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write the split with raw ids (user_id, item_id, rating or label (implicit data),
    timestamp, domain).

    Files: :data:`SPLIT_FILES`. ``out_dir`` must not exist or be an empty folder, unless
    ``overwrite``. Everything is written into a temporary folder and only then moved into
    place, so ``out_dir`` is either complete or as it was (absent, or empty).
    """
    out = _followed(Path(out_dir))
    existed = out.exists()  # overwrite replaces what was checked, not what came since
    fill = check_split_target(out, overwrite)
    if not fill:
        out.parent.mkdir(parents=True, exist_ok=True)
    # Filling an empty folder writes inside it: the folder itself (its permissions, owner,
    # a mount on it, a link to it) stays, and each file's rename stays on its filesystem.
    tmp = staging_dir(out if fill else out.parent, out.name)  # a split folder is shared data
    moved: list[Path] = []
    try:
        parts = {
            "train": split.train,
            "valid_support": Interactions.concat([t.support for t in split.valid]),
            "valid_query": Interactions.concat([t.query for t in split.valid]),
            "test_support": Interactions.concat([t.support for t in split.test]),
            "test_query": Interactions.concat([t.query for t in split.test]),
        }
        for name, inter in parts.items():
            frame = ds.to_frame(inter)
            if ds.feedback == "implicit":
                # 0/1 labels under "label", as they were read: under "rating", fit read the
                # split back as explicit ratings on a 0-1 scale
                frame = frame.rename(columns={"rating": "label"})
                frame["label"] = frame["label"].round().astype(np.int64)
            frame.to_csv(tmp / f"{name}.csv", index=False)
        # which part each held-out item belongs to: a test user's full ranking runs over
        # the test items only, and the file gave no way to tell them from validation's
        part = np.full(len(split.cold_items), "", dtype=object)
        part[np.isin(split.cold_items, split.valid_cold_items)] = "valid"
        part[np.isin(split.cold_items, split.test_cold_items)] = "test"
        cold = pd.DataFrame({"item_id": ds.items.ids[split.cold_items].astype(str), "part": part})
        cold.to_csv(tmp / "cold_items.csv", index=False)
        (tmp / "summary.json").write_text(json.dumps(split.summary, indent=2, sort_keys=True))
        if fill:
            # summary.json last: a folder that has it is complete
            for name in sorted(os.listdir(tmp), key=lambda n: n == "summary.json"):
                os.replace(tmp / name, out / name)
                moved.append(out / name)
            tmp.rmdir()
        else:  # the previous split (if any) aside, then put back if the new one fails
            try:
                # `out` was absent when checked (or overwrite was not given): a folder
                # another process wrote there since is not replaced
                replace_dir(tmp, out, ".old-", out.name, replace=overwrite and existed)
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise MetarecError(
                    f"{out}: another process wrote there while this split was being "
                    "written; this split was abandoned and that folder kept"
                ) from None
    except BaseException:
        for path in moved:  # an interrupted fill leaves the folder empty again
            path.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
