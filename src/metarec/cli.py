"""The ``metarec`` command. The only module that parses argv.

Each subcommand is a small function ``cmd_<name>(args) -> int`` that calls library code and
prints. User-facing errors (:class:`metarec.types.MetarecError`, missing files, bad encodings)
become one line on stderr and exit status 2, with no traceback and nothing written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
import warnings
from pathlib import Path

from metarec.errors import MetarecError, one_line, user_path

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE's, as a shell reports a tool it ended


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _loader_options(args) -> dict:
    """Column-mapping options for the generic csv/parquet loader (ignored by named sets)."""
    opts = {}
    for key in (
        "user_col",
        "item_col",
        "rating_col",
        "time_col",
        "label_col",
        "domain_col",
        "items",
    ):
        val = getattr(args, key, None)
        if val is not None:
            # column names stripped as the files' headers are (" title " was missing)
            opts[key] = val.strip() if key.endswith("_col") else val
    if getattr(args, "text_cols", None):
        opts["text_cols"] = tuple(c.strip() for c in args.text_cols.split(",") if c.strip())
    return opts


def _load(args):
    from metarec.data import load_dataset
    from metarec.preprocess import PreprocessConfig, preprocess

    cfg = PreprocessConfig()
    return load_dataset(
        args.name,
        path=args.path,
        preprocess=lambda raw: preprocess(raw, cfg),
        **_loader_options(args),
    )


# --- subcommands -------------------------------------------------------------------------


def cmd_datasets(args) -> int:
    from metarec.data import list_datasets

    rows = list_datasets()
    # where a dataset read from a path is looked for, and whether it is there: the folder
    # name was in --json only, so a plain listing did not say what METAREC_DATA_DIR needs
    root = os.environ.get("METAREC_DATA_DIR")
    try:
        base = Path(root).expanduser() if root else None
    except RuntimeError:  # "~nosuchuser/data": no such home to expand
        base = Path(root)
    from metarec.data import DATASETS

    for r in rows:
        if r.get("folder"):
            where = base / r["folder"] if base is not None else None
            # a folder is "found" only with the files its reader needs (an ml-1m folder
            # without ratings.dat was "found", and `info` then failed)
            lacks = (
                DATASETS[r["name"]].missing(where) if where is not None and where.is_dir() else []
            )
            r["present"] = bool(where is not None and where.is_dir() and not lacks)
            if lacks:
                r["missing_files"] = lacks
    if args.json:
        _print_json(rows)
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['description']}")
        if r.get("folder"):
            state = (
                (
                    "found"
                    if r["present"]
                    else f"incomplete: no {', '.join(r['missing_files'])}"
                    if r.get("missing_files")
                    else "not found"
                )
                if root
                else "METAREC_DATA_DIR is unset; or pass --path"
            )
            print(f"{'':<{width}}  folder: $METAREC_DATA_DIR/{r['folder']} ({state})")
    return 0


def cmd_info(args) -> int:
    from metarec.data import dataset_info

    ds = _load(args)
    info = dataset_info(ds)
    # what default cleaning changed (e.g. repeated purchases merged), so counts are explained
    info["preprocessing"] = [
        {k: v for k, v in step.items() if k != "enabled"}
        for step in ds.report
        if step.get("rows_before") != step.get("rows_after")
    ]
    if args.json:
        _print_json(info)
    else:
        for key, val in info.items():
            print(f"{key:>20}: {_plain(val)}")
    return 0


def _plain(val) -> str:
    """A value of `info` as text rather than a Python repr ({'1': 193} read as code)."""
    if val is None:
        return "-"
    if isinstance(val, dict):
        return ", ".join(f"{k}: {_plain(v)}" for k, v in val.items()) or "-"
    if isinstance(val, list | tuple):
        sep = "; " if any(isinstance(v, dict) for v in val) else ", "
        return sep.join(_plain(v) for v in val) or "-"
    return str(val)


def cmd_split(args) -> int:
    from metarec.splits import check_split_target, make_split, write_split

    out = Path(args.out)
    inputs = [Path(p) for p in (args.path, getattr(args, "items", None)) if p]
    for p in inputs:
        if out.resolve() == p.resolve() or out.resolve() in p.resolve().parents:
            raise MetarecError(f"--out {out} holds the input {p}; write the split elsewhere")
    check_split_target(out, args.overwrite)  # before the data is read and cut
    if args.protocol != "cross-domain" and (args.source or args.target):
        raise MetarecError(
            f"--source and --target are read by --protocol cross-domain only, not {args.protocol}"
        )
    ds = _load(args)
    from metarec.preprocess import removed_rows

    # as fit says it (split said nothing); a named dataset may come without --path
    for line in removed_rows(ds.report, args.path or ds.name):
        print(f"metarec: warning: {line}", file=sys.stderr)
    kw = {"k_shot": args.k, "n_query": args.query, "seed": args.seed}
    if args.protocol == "cross-domain":
        if not args.source or not args.target:
            raise MetarecError("--protocol cross-domain needs --source and --target domains")
        kw.update(source=args.source, target=args.target)
    split = make_split(ds, args.protocol, **kw)
    if args.seed != 0 and split.summary.get("by_time"):
        # seeds 0-4 gave five identical splits without a word (summary.json says seed 4)
        print(
            f"metarec: note: --seed {args.seed} changes nothing in this split: {args.protocol} "
            "holds out the newest users or items by time on data with timestamps",
            file=sys.stderr,
        )
    write_split(split, ds, out, overwrite=args.overwrite)
    _print_json(split.summary)
    return 0


def cmd_embed(args) -> int:
    from metarec.features import embed_dataset
    from metarec.model import default_embedding_dir
    from metarec.text import make_encoder

    ds = _load(args)
    encoder = make_encoder(args.model, device=args.device)
    cache_dir = user_path(args.cache) if args.cache else default_embedding_dir()
    if args.template and args.text_cols and ds.item_table is not None:
        from metarec.text.templates import check_columns, template_fields

        # the column may be in the items file, but --text-cols kept only the ones named
        # (fit, which infers the text columns, took the same template)
        check_columns(
            args.template,
            template_fields(args.template),
            ds.item_table.frame.columns,
            "--text-cols keeps only the columns it names: add the template's columns there, "
            "or leave --text-cols out",
        )
    stats = embed_dataset(
        ds, encoder, cache_dir, template=args.template, show_progress=not args.json
    )
    if not stats["items_with_text"] and not stats.get("users_with_text"):
        # it embedded nothing and exited 0, so "warm the cache before fit" silently did not
        # (the csv loader reads no column as text unless told; fit infers text columns)
        raise MetarecError(
            f"embed: {ds.name!r} has no item or user text to embed"
            + (
                " (name the text columns with --text-cols)"
                if args.name in ("csv", "parquet")
                else ""
            )
        )
    if stats["encoded"] and not stats["stored"]:
        # embed exists to fill the cache: vectors that could not be kept (a cache path
        # that is a file, a read-only folder) are a failure here, not a warning and exit 0
        raise MetarecError(
            f"embed: the cache {stats['cache_dir']} could not store the vectors (see the "
            "warning above); give a writable --cache"
        )
    if stats["dropped_shards"] or stats["index_rebuilt"]:
        print(
            f"metarec: warning: the embedding cache {stats['cache_dir']} was damaged: "
            f"{stats['dropped_shards']} shard(s) dropped"
            + (", index rebuilt" if stats["index_rebuilt"] else "")
            + "; their texts were encoded again",
            file=sys.stderr,
        )
    if args.json:
        _print_json(stats)
    else:
        for key, val in stats.items():
            print(f"{key:>16}: {val}")
    return 0


def _model_config(args):
    from metarec.config import apply_overrides, deep_merge, load_toml, to_dict
    from metarec.model import ModelConfig

    data = to_dict(ModelConfig())
    if args.config:
        loaded = load_toml(args.config)
        # an experiment file keeps the model under [model] and the text encoder in a
        # top-level [text] (which `evaluate` gives every method); a model file is the
        # table itself. The experiment's [text] used to be dropped without a word.
        experiment_keys = ("model", "methods", "data", "split", "seeds", "shots")
        if isinstance(loaded.get("model"), dict) or any(k in loaded for k in experiment_keys[1:]):
            model = dict(loaded.get("model") or {})
            if isinstance(loaded.get("text"), dict):
                inner = model.get("text") or {}
                twice = sorted(
                    k for k in loaded["text"] if k in inner and inner[k] != loaded["text"][k]
                )
                if twice:
                    # [model.text] won without a word, where evaluate refuses [model] text
                    raise MetarecError(
                        f"--config {args.config}: text.{twice[0]} is given in both [text] "
                        "and [model.text], differently; give it once"
                    )
                model["text"] = deep_merge(loaded["text"], inner)
            rest = sorted(k for k in loaded if k not in ("model", "text", "base_dir"))
            if rest:
                warnings.warn(
                    f"--config {args.config}: an experiment file; fit uses its [model] and "
                    f"[text] only, not {', '.join(rest)}",
                    stacklevel=1,
                )
            loaded = model
        data = deep_merge(data, loaded)
    given = apply_overrides({}, args.set or [])
    if "model" in given:
        # an experiment's [model] keys, written as `evaluate --set` takes them
        raise MetarecError(
            "--set model...: fit's --set keys are the model's own (train.steps, not "
            "model.train.steps)"
        )
    data = apply_overrides(data, args.set or [])
    try:
        return ModelConfig.from_dict(data)
    except MetarecError as err:
        # ModelConfig names its keys as an experiment file's [model] table holds them
        # ("model.rating_members"); fit's --set and model file say "rating_members"
        text = str(err)
        if text.startswith("model."):
            raise MetarecError(text.removeprefix("model.")) from None
        raise


def _check_output(out: str | Path, run: str | Path, what: str, **inputs: str | Path) -> None:
    """Before any work: ``out`` must be writable as a file (not a folder or a device),
    outside the RUN, which predict and recommend never modify, and none of ``inputs``
    (flag name -> path: ``--out S.csv`` overwrote the support it read); "-" is stdout."""
    from metarec.artifacts import check_derived_run
    from metarec.atomic import check_can_create, writable_target

    if str(out) == "-":
        if sys.stdout is None:
            # started with stdout closed (`>&-`): pandas, given None, returned the CSV as
            # a string, and the command said it wrote it (probe 137)
            raise MetarecError("--out -: stdout is closed; give --out a file path")
        return
    for flag, path in inputs.items():
        if path is not None and os.path.realpath(out) == os.path.realpath(path):
            raise MetarecError(
                f"--out {out} is the --{flag} file it reads; write the output elsewhere"
            )
    target = writable_target(out)
    check_derived_run(out, run, what)  # first: a path inside the RUN is never probed
    check_can_create(target)  # before the scoring, not at the write
    # after the RUN check: --out RUN/config.json is named as inside the RUN
    suffix = Path(out).suffix.lower()
    if suffix in _UNWRITTEN_SUFFIXES:
        # the CSV text had gone into a file named .gz or .json, which the readers then
        # refused ("is a gzip-compressed file"); .parquet and .pq are written as Parquet
        raise MetarecError(
            f"--out {out}: writes CSV (.csv, or .tsv for tabs) or Parquet (.parquet), not "
            f"{suffix} files"
        )


# output names whose format --out does not write (compressed, JSON, spreadsheets)
_UNWRITTEN_SUFFIXES = (
    ".gz", ".bz2", ".xz", ".zst", ".zip", ".json", ".jsonl", ".xlsx", ".xls", ".feather",
)  # fmt: skip


def _write_csv_atomic(frame, out: Path) -> None:
    """``frame`` at ``out`` (atomically) as the readers read that name: Parquet for
    .parquet / .pq, tab-separated CSV for .tsv / .tab, else CSV; or CSV to stdout for
    "-". (A .parquet name had been given CSV text, which the CLI could not read back.)"""
    from metarec.atomic import atomic_path

    suffix = out.suffix.lower()
    sep = "\t" if suffix in (".tsv", ".tab") else ","
    if str(out) == "-":
        if sys.stdout is None:  # checked before the work too (_check_output)
            raise MetarecError("--out -: stdout is closed; give --out a file path")
        frame.to_csv(sys.stdout, index=False, sep=sep)
        return
    if suffix in (".parquet", ".pq"):
        with atomic_path(out) as tmp:
            frame.to_parquet(tmp, index=False)
        return
    with atomic_path(out) as tmp, tmp.open("w", newline="") as fh:
        frame.to_csv(fh, index=False, sep=sep)


def _said(args) -> tuple[object, str]:
    """(stream, name) for a command's closing line: stderr and "stdout" when its output
    is stdout (--out -), else stdout and the --out path."""
    if str(args.out) == "-":
        return sys.stderr, "stdout"
    return sys.stdout, str(args.out)


def cmd_fit(args) -> int:
    from metarec.artifacts import check_run_target
    from metarec.data.files import read_training_files

    t0 = time.perf_counter()
    check_run_target(args.out)  # before training, not after it
    config = _model_config(args)
    if config.text.cache:
        # a cache inside the RUN folder made the finished fit fail on its own files
        # ("a RUN holding files it did not write"), after the whole fit, and stay there
        cache = user_path(config.text.cache).resolve()
        out = user_path(args.out).resolve()
        if cache == out or out in cache.parents:
            raise MetarecError(
                f"text.cache {config.text.cache} is inside --out {args.out}: a RUN folder "
                "holds only what fit writes; put the embedding cache elsewhere"
            )
    import dataclasses

    if getattr(args, "device", None):
        config = dataclasses.replace(config, device=args.device)
    if getattr(args, "quiet", False):
        config = dataclasses.replace(config, progress=False)
    raw = read_training_files(args.train, args.items, args.users, rating_range=args.rating_range)
    from metarec import distributed

    def said_removed(ds) -> None:
        # rows the default cleaning removed (a repeated user-item row keeps its newest):
        # said, where the summary's interaction count alone looked like rows gone missing
        from metarec.preprocess import removed_rows

        for line in removed_rows(ds.report, args.train):
            print(f"metarec: warning: {line}", file=sys.stderr)

    if getattr(args, "distributed", False) or distributed.launched_by_torchrun():
        # rank 0 says what preprocessing removed, as one process does (it said nothing)
        pred = distributed.fit_distributed(raw, config, on_prepared=said_removed)
        if pred is None:  # not rank 0: rank 0 alone writes the RUN and prints
            return 0
    else:
        from metarec.predictor import Predictor
        from metarec.preprocess import prepare

        ds = prepare(raw)
        said_removed(ds)
        pred = Predictor.fit(ds, config)
    pred.save(args.out)
    # against every row of T (the model's known_items_ leaves out the rows of the
    # validation users fit held back, and under new_items the held-out items)
    rated = set(pred.train.item_idx.tolist())
    summary = {
        "run": str(args.out),
        # users and items are the catalogue (U and I included); the RUN's meta.json
        # counts those with training rows, as train_users / train_items do here (a
        # probe read 943 users as the training users where 801 had rows)
        "users": len(pred.users),
        "items": len(pred.items),
        "train_users": len(set(pred.train.user_idx.tolist())),
        "train_items": len(rated),
        "interactions": len(pred.train),
        "rows_read": len(raw.ratings),
        "feedback": pred.info.get("feedback"),
        # the scale support ratings are checked against and predictions are clipped to:
        # T's lowest and highest rating unless --rating-range named it
        "rating_range": list(raw.rating_range),
        # the scoring model's algorithm (an implicit log has no rating model: its ranking
        # model, meta-learned by rank_meta, scores), and the ranking model's
        "algorithm": pred.model.scoring_algorithm,
        "rank_algorithm": pred.model.rank_algorithm,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    blend = pred.model.blend_
    # whether the closed-form blend was fitted: a small log holds out too few validation
    # users for its weights, and the meta-model then scores alone (said nowhere before)
    summary["blend"] = blend is not None
    # the model's own reason: a blend switched off, or with no input on this data (the
    # rating blend on implicit data), is not "skipped"
    skipped = getattr(pred.model, "blend_skipped_", "")
    if blend is None and skipped:
        summary["blend_skipped"] = f"{skipped}: the meta-model scores alone"
    # the ranking half alone can be missing ("blend": true for the rating half): recommend
    # then ranks without EASE / kNN / popularity
    rank_skipped = getattr(pred.model, "rank_blend_skipped_", "")
    if blend is not None and blend.rank_weights is None and rank_skipped:
        summary["rank_blend_skipped"] = (
            f"{rank_skipped}: recommend ranks by the ranking model alone"
        )
    # the rating half dropped (a stack that fell as users rate higher): ratings are then
    # the meta-model's alone
    rating_skipped = getattr(pred.model, "rating_blend_skipped_", "")
    if blend is not None and blend.rating_weights is None and rating_skipped:
        summary["rating_blend_skipped"] = f"{rating_skipped}: ratings are the meta-model's alone"
    unrated = len(pred.items) - len(rated)
    if unrated:
        summary["unrated_items"] = unrated
    rank_part = pred.model.rank_
    if (
        unrated
        and blend is not None
        and blend.rank_weights is not None
        and not (rank_part is not None and rank_part.new_items)
    ):
        # a probe's catalogue: 60 never-rated items whose text matched the users' taste,
        # none of them in any top 10 (ranked after the rated items), and nothing said so
        print(
            f"metarec: warning: {unrated} of {len(pred.items)} catalogue items have no rows "
            f"in {args.train}: predict scores them by their text, but recommend ranks them "
            "low, since the ranking blend's collaborative inputs are 0 for them and its "
            "weights were fitted on rated items; to serve new items, fit with --set "
            'valid_holdout="new_items" (README, "Items nobody rated")',
            file=sys.stderr,
        )
    if blend is not None and blend.rating_prior:
        # the closed-form rating the rating stack leans on (blend.rating_prior "auto"
        # chooses it on the validation users)
        summary["rating_prior"] = blend.rating_prior
    if config.refit:  # the steps below were chosen on validation, then trained on all rows
        summary["refit"] = True
    for key, part in (("rating", pred.model.rating_), ("rank", pred.model.rank_)):
        if part is not None and part.result is not None:
            # an ensemble (model.rating_members / rank_members): best_step and valid_loss
            # are its first member's, best_steps and valid_losses every member's
            scale = pred.model.rating_unit**2 if key == "rating" else 1.0

            def on_scale(loss, scale=scale):  # squared error on the data's rating scale
                return None if loss is None else loss * scale

            summary[f"{key}_members"] = part.members
            summary[f"{key}_best_step"] = part.result.best_step
            summary[f"{key}_valid_loss"] = on_scale(part.result.best_valid)
            if part.members > 1:
                summary[f"{key}_best_steps"] = list(part.member_steps)
                summary[f"{key}_valid_losses"] = [on_scale(v) for v in part.member_valid]
            if part.negatives:  # train.negatives as resolved on this log ("auto")
                summary[f"{key}_negatives"] = part.negatives
    _print_json(summary)
    return 0


def _warn_unknown_support(stats: dict, support: str) -> None:
    repeated = stats["repeated_support_rows"]
    if repeated:
        # fit says so of T's; a conflicting rating is often a mistake in the data
        print(
            f"metarec: warning: {repeated} row{'s' if repeated > 1 else ''} of {support} "
            f"repeat{'' if repeated > 1 else 's'} a user's item and "
            f"{'were' if repeated > 1 else 'was'} left out (a repeated user-item row keeps "
            "its newest)",
            file=sys.stderr,
        )
    if stats["unknown_support_items"]:
        alike = stats.get("unknown_support_look_alike")
        print(
            f"metarec: warning: {stats['unknown_support_items']} support rows name items "
            "outside the catalogue and were ignored (first: "
            f"{stats.get('unknown_support_example')!r}"
            + (
                f"; the catalogue has {alike!r}: ids are compared as written)"
                if alike is not None
                else ")"
            ),
            file=sys.stderr,
        )


def _warn_look_alike_users(stats: dict) -> None:
    pairs = stats.get("look_alike_users") or []
    if pairs:
        shown = ", ".join(f"{a!r} (training has {b!r})" for a, b in pairs[:3])
        more = f" and {len(pairs) - 3} more" if len(pairs) > 3 else ""
        who = (
            "1 user is not a training user but spells"
            if len(pairs) == 1
            else (f"{len(pairs)} users are not training users but spell")
        )
        print(
            f"metarec: warning: {who} one's number another way: {shown}{more}; ids are "
            "compared as written, so they were scored as new users without their training "
            "history",
            file=sys.stderr,
        )


def _new_users(args):
    """``--users``' frame (side data of users the RUN was not fitted with), or None."""
    if args.users is None:
        return None
    from metarec.data.files import read_users

    return read_users(args.users)


def _say_listed_users(stats: dict, users: str | None) -> None:
    notes = (
        (
            "side_data_users_without_support",
            "no rows in --support and got no recommendations (recommend serves the "
            "support's users: give each a row there, or score them with predict)",
        ),
        # their rows were fitted with the rest of the users file: a changed age here does
        # not reach the model until the next fit, which a silent pass would hide
        (
            "listed_users_kept",
            "side data in the RUN already (from the users file at fit); that is used "
            "(fit again to change it)",
        ),
    )
    for key, what in notes:
        n = stats.get(key, 0)
        if n:
            who = "1 user" if n == 1 else f"{n} users"
            verb = "has" if n == 1 else "have"
            print(f"metarec: note: {who} of {users} {verb} {what}", file=sys.stderr)


def cmd_predict(args) -> int:
    from metarec.data.files import read_log, read_query
    from metarec.predictor import Predictor

    _check_output(
        args.out, args.run, args.command, support=args.support, query=args.query, users=args.users
    )
    pred = Predictor.load(args.run, device=args.device)
    support, _, _ = read_log(args.support)  # predict/recommend check its feedback kind
    query = read_query(args.query)
    out, stats = pred.predict(support, query, _new_users(args))
    _write_csv_atomic(out, Path(args.out))
    _warn_unknown_support(stats, args.support)
    _warn_look_alike_users(stats)
    _say_listed_users(stats, args.users)
    stream, to = _said(args)
    users = "1 user" if stats["users"] == 1 else f"{stats['users']} users"
    print(f"wrote {len(out)} predictions for {users} to {to}", file=stream)
    return 0


def cmd_recommend(args) -> int:
    from metarec.data.files import read_log
    from metarec.predictor import Predictor

    _check_output(args.out, args.run, args.command, support=args.support, users=args.users)
    pred = Predictor.load(args.run, device=args.device)
    support, _, _ = read_log(args.support)  # predict/recommend check its feedback kind
    out, stats = pred.recommend(support, args.k, args.domain, _new_users(args))
    _write_csv_atomic(out, Path(args.out))
    _warn_unknown_support(stats, args.support)
    _warn_look_alike_users(stats)
    _say_listed_users(stats, args.users)
    per_user = out.groupby("user_id", sort=False).size()  # rows each user got
    short = int((per_user < args.k).sum())  # the catalogue minus their support is < k
    note = f"; {short} of them had fewer than {args.k} candidates left" if short else ""
    empty = stats["no_candidates"]
    if empty:
        # they get no rows: said, or R.csv silently lacked a user S named
        where = f"the items of domain {args.domain!r}" if args.domain else "the catalogue"
        names = ", ".join(map(repr, empty[:5])) + (", ..." if len(empty) > 5 else "")
        who = "1 user has" if len(empty) == 1 else f"{len(empty)} users have"
        get = "gets" if len(empty) == 1 else "get"
        print(
            f"metarec: warning: {who} rated all of {where} and {get} no recommendations: {names}",
            file=sys.stderr,
        )
    of = f" of {stats['users']}" if empty else ""
    stream, to = _said(args)
    users = "user" if len(per_user) == 1 and not of else "users"
    print(f"wrote top-{args.k} for {len(per_user)}{of} {users} to {to}{note}", file=stream)
    return 0


def cmd_export(args) -> int:
    from metarec.export import export_run

    _print_json(export_run(args.run, args.out, args.dtype))
    return 0


def _default_feedback_db() -> Path:
    from metarec.data.download import cache_root

    return cache_root() / "feedback"


def _listen(host: str, port: int) -> list:
    """Sockets listening on every address ``host`` resolves to (as uvicorn binds them),
    bound before the model loads, so that a port in use or a host that is not this
    machine's is one line and exit 2, not uvicorn's exit 3 after a "serving on" line. They
    are kept and handed to uvicorn: bound and released here, the port could be taken by
    another server while the model loaded (seconds), and this one then failed after all."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise MetarecError(f"--host {host!r}: {err.strerror}") from None

    socks: list[socket.socket] = []
    skipped: list[str] = []
    for family, kind, proto, _, addr in dict.fromkeys((f, k, p, "", a) for f, k, p, _, a in infos):
        s = None
        try:
            s = socket.socket(family, kind, proto)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            if family == socket.AF_INET6:
                # IPv6 only, as asyncio binds: "::" left at the kernel's default also
                # listened on every IPv4 address
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            # listening now: two bound sockets that do not listen can share a port on Linux
            s.listen(2048)  # uvicorn's default backlog
            socks.append(s)
        except OSError as err:
            if s is not None:
                s.close()
            if err.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                # an address this machine lacks ("::1 localhost" with IPv6 off), as
                # asyncio skips it: fine while another of the host's addresses binds
                skipped.append(f"{addr[0]} ({err.strerror})")
                continue
            for t in socks:
                t.close()
            raise MetarecError(f"cannot listen on {addr[0]} port {port}: {err.strerror}") from None
    if not socks:
        raise MetarecError(f"cannot listen on {host}:{port}: {', '.join(skipped)}")
    return socks


def cmd_serve(args) -> int:
    import importlib.util

    # before the port is bound: a core install crashed on `import uvicorn`, exit 1
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise MetarecError(
            f"serve needs the 'serve' extra ({', '.join(missing)} not installed): "
            "pip install 'metarec[serve]'"
        )
    if not 1 <= args.port <= 65535:
        raise MetarecError(f"--port must be in 1..65535, got {args.port}")
    if args.torch_threads < 1:
        raise MetarecError(f"--torch-threads must be >= 1, got {args.torch_threads}")
    if args.feedback_db:
        from metarec.artifacts import is_run

        # a store in a RUN folder made every later fit or export onto that RUN refuse it
        # ("a RUN holding 1 file(s) it did not write"): the RUN holds what fit writes
        fb = user_path(args.feedback_db).resolve()
        inside = next((p for p in (fb, *fb.parents) if is_run(p)), None)
        if inside is not None:
            raise MetarecError(
                f"--feedback-db {args.feedback_db} is inside the RUN {inside}; keep the "
                "feedback store outside RUN folders"
            )
    socks = _listen(args.host, args.port)
    try:
        return _serve(args, socks)
    finally:
        for s in socks:
            s.close()


def _serve(args, socks: list) -> int:
    """cmd_serve past its port: the checks, the model, and uvicorn on ``socks``."""
    import gc

    import torch
    import uvicorn

    from metarec.predictor import Predictor
    from metarec.serve.app import ServeConfig, create_app

    # one intra-op thread per request: concurrent requests then use the cores in parallel
    torch.set_num_threads(args.torch_threads)
    if args.token is not None and not args.token.strip():
        # an empty --token (an unset shell variable, --token "$TOKEN") silently meant no auth
        raise MetarecError("--token is empty; give a token, or leave the flag out")
    env = os.environ.get("METAREC_TOKEN")
    if args.token is None and env is not None and not env.strip():
        # it is --token's equivalent: empty it silently meant an open server, and
        # whitespace alone a token no client could send
        raise MetarecError(
            "METAREC_TOKEN is set but empty; unset it to serve without a token, or give one"
        )
    token = (args.token or env or "").strip() or None
    if token is not None and any(c.isspace() for c in token):
        raise MetarecError("the bearer token holds whitespace, which a client cannot send")
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print(
            f"metarec: warning: serving on {args.host} without a token (--token or "
            "METAREC_TOKEN): anyone who reaches this port can use the model",
            file=sys.stderr,
        )
    cfg = ServeConfig(
        max_k=args.max_k,
        max_interactions=args.max_interactions,
        max_body_bytes=args.max_body_bytes,
        cache_entries=args.cache_entries,
        cache_ttl_s=args.cache_ttl,
        cache_mb=args.cache_mb,
        token=token,
    )
    feedback = Path(args.feedback_db) if args.feedback_db else _default_feedback_db()
    app = create_app(
        Predictor.load(args.run, device=args.device),
        feedback_db=feedback,
        config=cfg,
        run_name=str(args.run),
    )
    # The loaded model and id maps are ~400k long-lived objects; left in the collector's
    # generations, every full collection walks them all (tens of ms: the p99 tail).
    gc.collect()
    gc.freeze()
    where = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address: bracketed
    # flushed: into a file or pipe stdout is block-buffered, and a supervisor waiting for
    # this line saw it only once the server stopped (probe 159)
    print(
        f"metarec: serving {args.run} on http://{where}:{args.port} (feedback: {feedback})",
        flush=True,
    )
    # uvicorn colours its log on any terminal; NO_COLOR (no-color.org) and TERM=dumb say no
    plain = bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        use_colors=False if plain else None,
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=socks)
    except KeyboardInterrupt:
        pass  # Ctrl-C: uvicorn has shut down gracefully and re-raised it (uvicorn.run's way)
    return 0 if server.started else 3  # 3: it never started (uvicorn.run's code)


def cmd_update(args) -> int:
    from metarec.update import UpdateConfig, update_run

    cfg = UpdateConfig(steps=args.steps, outer_lr=args.lr, seed=args.seed)
    _print_json(update_run(args.run, args.feedback, args.out, cfg))
    return 0


MAX_QUICKSTART_SEEDS = 100  # quickstart --seeds: each is a whole run of the main job


def _shots(text: str | None) -> tuple[int, ...]:
    """--shots "1,3,5,10" -> (1, 3, 5, 10); "" -> (). An empty item beside others
    (",,", "1,,3") is refused: ",," ran with no K-curve without a word."""
    if not (text or "").strip():
        return ()
    parts = [k.strip() for k in text.split(",")]
    try:
        if not all(parts):
            raise ValueError
        return tuple(int(k) for k in parts)
    except ValueError:
        raise MetarecError(
            f"--shots {text!r}: want comma-separated integers, e.g. 1,3,5,10 ('' = none)"
        ) from None


def cmd_quickstart(args) -> int:
    """The main job: user cold-start on the bundled goodbooks-sample, meta-model vs baselines."""
    from metarec.experiment import quickstart_config

    if not 1 <= args.seeds <= MAX_QUICKSTART_SEEDS:
        # each seed is a whole run (~2.5 min on 2 cores): 100000 was taken and ran on
        raise MetarecError(
            f"quickstart: --seeds must be in [1, {MAX_QUICKSTART_SEEDS}], got {args.seeds}"
        )
    config = quickstart_config(
        seeds=args.seeds,
        steps=args.steps,
        max_users=args.max_users,
        text_model=args.model,
        shots=_shots(args.shots),
    )
    return _run_experiment(config, Path(args.out), quiet=args.quiet, resume=args.resume)


def cmd_evaluate(args) -> int:
    from metarec.experiment import load_config

    only = None if args.only is None else args.only.split(",")
    config = load_config(args.config, args.set or [], only=only)
    if not args.quiet:
        _say_defaults(args.config, args.set or [], config)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    return _run_experiment(config, out, quiet=args.quiet, resume=args.resume)


def _say_defaults(path, overrides: list[str], config) -> None:
    """One stderr line naming the run-shaping settings the config left to their defaults
    (which data, which seeds, which K-curve): a file without them ran goodbooks-sample on
    seeds 0, 1, 2 and five shots without a word."""
    from metarec.config import apply_overrides, load_toml

    # the file as the --set overrides leave it (load_config has checked both)
    given = apply_overrides(load_toml(path), overrides)
    shown = {
        ("data", "name"): config.data.name,
        ("seeds",): ", ".join(map(str, config.seeds)),
        ("shots",): ", ".join(map(str, config.shots)) or "none",
    }

    def is_set(keys: tuple[str, ...]) -> bool:
        node = given
        for k in keys:
            if not isinstance(node, dict) or node.get(k) is None:
                return False
            node = node[k]
        return True

    unset = [f"{'.'.join(keys)} = {value}" for keys, value in shown.items() if not is_set(keys)]
    if unset:
        print(f"metarec: {path} leaves to the defaults: {'; '.join(unset)}", file=sys.stderr)


def _run_experiment(config, out: Path, quiet: bool = False, resume: bool = False) -> int:
    from metarec.experiment import run
    from metarec.report import key_metrics, markdown_table, primary_metric, verdict

    t0 = time.perf_counter()
    results = run(config, out, progress=not quiet, resume=resume)
    table = results.summary("main")
    print(
        f"\n{config.name}: K = {results.main_k}, seeds {list(config.seeds)}, "
        f"{results.protocol.get('test_users')} test users"
        # where the seeds cut different splits the count is the first seed's (probe 134)
        + (
            f" (seed {config.seeds[0]}'s split)"
            if len(config.seeds) > 1 and not results.protocol.get("same_test_tasks")
            else ""
        )
    )
    print(markdown_table(results, table, key_metrics(results)))
    line = verdict(results, table, primary_metric(results))
    if line:
        print(line.replace("**", ""))
    from metarec.report import plots_missing

    missing = plots_missing()
    what = f" and results.json (no plots: {missing})" if missing else ", results.json and plots"
    print(f"wrote {out / 'report.md'}{what} in {time.perf_counter() - t0:.0f}s")
    return 0


# --- parser ------------------------------------------------------------------------------


def _add_data_args(p: argparse.ArgumentParser, with_name: bool = True) -> None:
    if with_name:
        p.add_argument("name", help="dataset name (see `metarec datasets`), or csv / parquet")
    p.add_argument("--path", help="dataset folder or file (default: $METAREC_DATA_DIR/<folder>)")
    g = p.add_argument_group("column mapping for csv/parquet logs")
    g.add_argument("--user-col", dest="user_col")
    g.add_argument("--item-col", dest="item_col")
    g.add_argument("--rating-col", dest="rating_col")
    g.add_argument("--time-col", dest="time_col")
    g.add_argument("--label-col", dest="label_col", help="0/1 label column (implicit data)")
    g.add_argument("--domain-col", dest="domain_col")
    g.add_argument("--items", help="item side file (CSV/Parquet with item_id + text columns)")
    g.add_argument("--text-cols", dest="text_cols", help="comma-separated item text columns")


_GIVEN = "_metarec_options_given"  # the namespace's record of the options seen


class _StoreOnce(argparse._StoreAction):
    """A single-valued option given twice is an error: argparse kept the last one, so
    `recommend --domain films --domain books` served books without a word."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, _GIVEN, None)
        if given is None:
            given = set()
            setattr(namespace, _GIVEN, given)
        if self.dest in given:
            parser.error(f"{'/'.join(self.option_strings)} given twice; give it once")
        given.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error policy: one line on stderr, exit 2 (argparse printed
    its usage block and then the error, three lines or more), and a single-valued option
    given twice refused (:class:`_StoreOnce`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the plain store action, for every option of this parser and its argument groups
        # (they share its registry); positionals are given once by construction
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, rest = super().parse_known_args(args, namespace)
        if hasattr(ns, _GIVEN):
            delattr(ns, _GIVEN)
        return ns, rest

    def error(self, message: str):  # type: ignore[override]
        _say(f"{self.prog}: error: {message} (see {self.prog} --help)")
        raise SystemExit(EXIT_USAGE)


# predict's and recommend's --users
_NEW_USERS_HELP = (
    "U.csv: user_id + the side columns of fit's users file, for users the RUN was not "
    "fitted with (new users are then scored from their side data too)"
)


def build_parser() -> argparse.ArgumentParser:
    from metarec import __version__

    parser = _Parser(
        prog="metarec",
        description="Cold-start recommendation: large-model features + meta-learning + transfer.",
    )
    parser.add_argument("--version", action="version", version=f"metarec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("datasets", help="list the datasets metarec loads by name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("info", help="counts for a dataset")
    _add_data_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("split", help="cut a cold-start split and write it as CSVs")
    _add_data_args(p)
    p.add_argument(
        "--protocol",
        default="user-cold",
        choices=["warm", "user-cold", "item-cold", "user-item-cold", "cross-domain"],
    )
    p.add_argument("--k", type=int, default=10, help="support interactions per user (K shots)")
    p.add_argument("--query", type=int, default=10, help="query interactions per user")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="(default 0) the random draw of held-out users or items; user-, item- and "
        "user-item-cold hold out the newest ones on data with timestamps, unseeded",
    )
    p.add_argument("--source", help="source domain (cross-domain)")
    p.add_argument("--target", help="target domain (cross-domain)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("embed", help="embed a dataset's item (and user) texts into the cache")
    _add_data_args(p)
    p.add_argument("--model", default="default", help="sentence-transformers name or path")
    p.add_argument("--cache", help="cache folder (default: $METAREC_HOME/embeddings)")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default: cpu)")
    p.add_argument(
        "--template",
        help="item text template, e.g. '{title} by {authors}': the texts fit embeds with "
        "text.template set to the same (default: the dataset's own, else every text column)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("fit", help="fit the meta-learned model on your log; writes a RUN dir")
    p.add_argument(
        "--train", required=True, help="T.csv: user_id,item_id,rating|label[,timestamp][,domain]"
    )
    p.add_argument(
        "--items", required=True, help="I.csv: item_id + text/side columns (whole catalogue)"
    )
    p.add_argument("--users", help="U.csv: user_id + side columns")
    p.add_argument("--out", required=True, help="RUN directory to write")
    p.add_argument("--config", help="TOML model config (see configs/)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override, e.g. meta.inner_steps=3"
    )
    p.add_argument("--device", help="training device: cpu, cuda, cuda:N (default: model.device)")
    p.add_argument(
        "--rating-range",
        nargs=2,
        type=float,
        metavar=("LO", "HI"),
        help="the rating scale, e.g. 1 5 (default: T's lowest and highest rating); "
        "support ratings outside it are refused and predictions are clipped to it "
        "(write a negative bound as a plain number, -10, not -1e1)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel meta-training under torchrun (automatic when torchrun launched it)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (as --set progress=false); warnings and the summary stay",
    )
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="score query pairs after adapting to each user's support")
    p.add_argument("--run", required=True)
    p.add_argument("--support", required=True, help="S.csv, same columns as the training log")
    p.add_argument("--query", required=True, help="Q.csv: user_id,item_id")
    p.add_argument("--users", help=_NEW_USERS_HELP)
    p.add_argument(
        "--out",
        required=True,
        help="P.csv: user_id,item_id,score (tab-separated for a .tsv name, Parquet for "
        ".parquet; - for stdout)",
    )
    p.add_argument("--device", default=None, help="cpu (default), cuda or auto")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("recommend", help="top-k items per support user")
    p.add_argument("--run", required=True)
    p.add_argument("--support", required=True)
    p.add_argument("-k", type=int, default=10, help="items per user (default 10)")
    p.add_argument("--domain", help="recommend only this domain's items")
    p.add_argument("--users", help=_NEW_USERS_HELP)
    p.add_argument(
        "--out",
        required=True,
        help="R.csv: user_id,item_id,rank,score (tab-separated for a .tsv name, Parquet "
        "for .parquet; - for stdout)",
    )
    p.add_argument("--device", default=None, help="cpu (default), cuda or auto")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("export", help="write a smaller RUN (fp16 or int8 weights) and compare")
    p.add_argument("--run", required=True)
    p.add_argument("--dtype", required=True, choices=["fp16", "int8"])
    p.add_argument("--out", required=True, help="RUN directory to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="HTTP service: few-shot adapted recommendations")
    p.add_argument("--run", required=True)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="(default 8000)")
    p.add_argument(
        "--feedback-db",
        dest="feedback_db",
        help="SQLite file or folder for /feedback (default: $METAREC_HOME/feedback/)",
    )
    p.add_argument("--token", help="require this bearer token (default: $METAREC_TOKEN)")
    p.add_argument("--max-k", dest="max_k", type=int, default=1000, help="(default 1000)")
    p.add_argument(
        "--max-interactions",
        dest="max_interactions",
        type=int,
        default=1000,
        help="most interactions a request may send, and stored feedback rows it reads "
        "(the newest; default 1000)",
    )
    p.add_argument(
        "--max-body-bytes",
        dest="max_body_bytes",
        type=int,
        default=1 << 20,
        help="(default 1048576)",
    )
    p.add_argument(
        "--cache-entries",
        dest="cache_entries",
        type=int,
        default=4096,
        help="adapted users kept (default 4096)",
    )
    p.add_argument(
        "--cache-ttl", dest="cache_ttl", type=float, default=900.0, help="seconds (default 900)"
    )
    p.add_argument(
        "--cache-mb",
        dest="cache_mb",
        type=float,
        default=1024.0,
        help="memory budget of the adapted-user cache in MB (default 1024); each entry holds a "
        "score per catalogue item, so a large catalogue gets fewer entries than --cache-entries",
    )
    p.add_argument("--torch-threads", dest="torch_threads", type=int, default=1, help="(default 1)")
    p.add_argument(
        "--log-level",
        dest="log_level",
        default="warning",
        choices=("critical", "error", "warning", "info", "debug", "trace"),
    )
    p.add_argument("--device", default=None, help="cpu (default), cuda or auto")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("update", help="fold collected feedback into a RUN and meta-update it")
    p.add_argument("--run", required=True)
    p.add_argument("--feedback", required=True, help="the serve feedback database (file or folder)")
    p.add_argument("--out", required=True, help="the new RUN directory")
    p.add_argument(
        "--steps", type=int, default=100, help="meta-training steps per model part (default 100)"
    )
    p.add_argument("--lr", type=float, default=3e-4, help="(default 3e-4)")
    p.add_argument("--seed", type=int, default=0, help="(default 0)")
    p.set_defaults(func=cmd_update)

    p = sub.add_parser(
        "quickstart",
        help="the main job: user cold-start on the bundled goodbooks sample, "
        "meta-model vs baselines; writes report.md, results.json and plots",
    )
    p.add_argument("--out", default="quickstart-out", help="output folder (default: %(default)s)")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="number of seeds (default: 1, ~2.5 min each on 2 cores)",
    )
    p.add_argument("--model", default="default", help="text encoder (default MiniLM; hashing:64)")
    p.add_argument("--shots", default="1,3,5,10", help="K-curve shots, comma-separated ('' = none)")
    p.add_argument("--steps", type=int, help="cap meta-training steps (smaller = faster)")
    p.add_argument("--max-users", dest="max_users", type=int, help="keep only the first N users")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--resume", action="store_true", help=_RESUME_HELP)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("evaluate", help="run an experiment config: fit, evaluate, report")
    p.add_argument("--config", required=True, help="experiment TOML (see configs/)")
    p.add_argument(
        "--out", help="output folder (default: runs/<the config file's name, without .toml>)"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override, e.g. seeds=[0] or split.k_shot=5",
    )
    p.add_argument(
        "--only",
        metavar="NAME,NAME",
        help="run only these of the config's methods (comma-separated names)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--resume", action="store_true", help=_RESUME_HELP)
    p.set_defaults(func=cmd_evaluate)
    return parser


_RESUME_HELP = (
    "reuse the (seed, method) results an earlier run left in OUT/partial/ where config, "
    "data, code and package versions match; fit the rest"
)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # the CLI's warnings are for its user: one line each, without Python's source echo
    print(one_line(f"metarec: warning: {message}"), file=sys.stderr)


def _drop_output() -> None:
    """Point stdout and stderr at /dev/null: the exit's flush of what is buffered for a
    closed pipe would raise again, outside any handler."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def _say(line: str) -> None:
    # On a terminal, first clear the current line: a progress bar that an error or Ctrl-C
    # cut short (the text encoder's, say) leaves the cursor after its text, and the error
    # would be glued to it. On a fresh line the clear does nothing.
    # (not on a terminal that says it takes no control codes: TERM=dumb showed "^[[K")
    prefix = "\r\033[K" if sys.stderr.isatty() and os.environ.get("TERM") != "dumb" else ""
    print(prefix + one_line(line), file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, as Ctrl-C's KeyboardInterrupt is:
    the cleanup an interrupt runs (staged files removed, a replaced RUN put back, an
    evaluate's files rolled back) then runs for ``kill``, ``timeout``, ``docker stop`` and a
    closed terminal too. Their default action ended the process on the spot, as
    ``kill -9`` does, leaving what a Ctrl-C cleans up (probe 137)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _termination_as_interrupt(names: tuple[str, ...] = ("SIGTERM", "SIGHUP")):
    """The signals ``names`` raise :class:`Terminated` while a command runs; the handlers
    before it are put back after. A signal set to be ignored stays ignored (``nohup``
    ignores SIGHUP), and off the main thread nothing changes (Python allows handlers only
    there)."""
    import signal

    def raise_terminated(signum, frame):
        # once: a second signal while the first one's cleanup runs would cut it short
        signal.signal(signum, signal.SIG_IGN)
        raise Terminated(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in names:
            signum = getattr(signal, name, None)  # no SIGHUP on Windows
            if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, raise_terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # serve: uvicorn takes SIGTERM (and SIGINT) over once it runs and shuts down
    # gracefully; a SIGHUP raised inside its event loop cancelled the requests in flight
    # and ended as a clean exit 0, where a service manager should see it die by signal
    names = ("SIGTERM",) if args.command == "serve" else ("SIGTERM", "SIGHUP")
    with _termination_as_interrupt(names):
        return _run(args)


# every flag that names a file or folder (the commands' own; `--query` is a count in split)
_PATH_FLAGS = (
    "out",
    "run",
    "config",
    "train",
    "items",
    "users",
    "support",
    "query",
    "path",
    "feedback",
    "feedback_db",
    "cache",
)


def _run(args: argparse.Namespace) -> int:
    try:
        for flag in _PATH_FLAGS:
            value = getattr(args, flag, None)
            if not isinstance(value, str):
                continue
            if flag != "cache" and not value.strip():
                # Path("") is the current folder: quickstart wrote its results into it,
                # fit failed on "Device or resource busy: ."
                raise MetarecError(f"--{flag.replace('_', '-')} is empty; give a path")
            if value.startswith("~"):
                # as a shell would, for `--out=~/x` and a quoted '~/x', which it leaves: a
                # folder named "~" was made in the working folder (split, fit), or a
                # file "~/log.csv" not found, where --cache and --model expanded it; a
                # "~name" of no such user stays as it is, as a shell leaves it
                setattr(args, flag, os.path.expanduser(value))
        # torchrun as metarec.distributed.launched_by_torchrun reads it (not imported
        # here: it imports torch), with more than one process
        world = os.environ.get("WORLD_SIZE", "1").strip()
        torchrun = "RANK" in os.environ and world.isdigit() and int(world) > 1
        if args.command != "fit" and torchrun:
            # every rank ran the whole experiment and raced to write the same folder
            raise MetarecError(
                f"`metarec {args.command}` does not run under torchrun (only `fit` is "
                "distributed): run it as one process"
            )
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            code = int(args.func(args) or 0)
            # stdout into a pipe is block-buffered: flushed here, a reader that left is
            # caught below, not Python's two-line "Exception ignored" and exit 120 at exit
            sys.stdout.flush()
            return code
    except MetarecError as err:
        _say(f"metarec: error: {err}")
        return EXIT_USAGE
    except FileNotFoundError as err:
        _say(f"metarec: error: file not found: {err.filename or err}")
        return EXIT_USAGE
    except BrokenPipeError:
        # the reader of stdout or stderr left (`metarec ... | head`), at the end or while
        # the work ran (a progress line to a closed pipe stops a fit): as a shell tool
        # ends on SIGPIPE, exit 128 + 13 and say nothing more. This returned 0, and a fit
        # stopped that way had written no RUN under `set -o pipefail` (probe 159)
        _drop_output()
        return EXIT_BROKEN_PIPE
    except OSError as err:
        # a disk that is full or read-only, a folder in the way: the environment, not a bug
        where = f": {err.filename}" if err.filename else ""
        _say(f"metarec: error: {err.strerror or err}{where}")
        return EXIT_USAGE
    except UnicodeDecodeError as err:
        _say(f"metarec: error: cannot decode input ({err.encoding}): {err.reason}")
        return EXIT_USAGE
    except Terminated as err:
        import signal

        with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
            _say(f"metarec: terminated ({signal.Signals(err.signum).name})")
        return 128 + err.signum  # the shell's status for death by that signal
    except KeyboardInterrupt:
        _say("metarec: interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
