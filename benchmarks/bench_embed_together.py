"""Two jobs embedding one new catalogue at once: ``python benchmarks/bench_embed_together.py
--json OUT``.

The embedding cache encodes new texts in parts of ``COMMIT_EVERY`` (8,192) and a writer
holds a claim on the part it encodes; a second writer does the free parts and then reads
the claimed ones. Three runs on fresh caches, each writer one process with ``--threads``
torch threads:

* ``alone``: one writer;
* ``together``: two writers started at the same moment (a barrier);
* ``together_without_claims``: the same two, with the claim replaced by none (as before
  claims existed): each encodes every part, reading back only what the other stored first.

Seconds are wall time from the start signal to the last writer's end (the encoder's load
is before it); ``encoded`` is the texts each writer sent to the encoder.

JSON keys: ``texts``, ``model``, ``threads``, ``alone`` / ``together`` /
``together_without_claims`` (each ``seconds`` and ``encoded``, a list per writer),
``together_vs_alone``, ``without_claims_vs_alone`` (ratios of seconds), ``machine``.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from pathlib import Path

from metarec.benchmarking import ScriptParser, json_path, positive_int, run_script, write_figures

WORDS = ("river", "glass", "winter", "garden", "engine", "harbour", "letter", "mountain")


def _texts(n: int) -> list[str]:
    """Distinct book-title-like texts (deterministic)."""
    return [
        f"The {WORDS[i % 8]} of {WORDS[(i // 8) % 8]} and {WORDS[(i // 64) % 8]}, volume {i}"
        for i in range(n)
    ]


def _writer(root: str, model: str, n: int, threads: int, claims: bool, start, done) -> None:
    import torch

    from metarec.text import cache as cache_module
    from metarec.text.encoder import make_encoder

    torch.set_num_threads(threads)
    if not claims:  # as before claims existed: every part is encoded without one
        cache_module._claim = lambda folder, part, wait: cache_module._Claim()
    encoder = make_encoder(model)
    texts = _texts(n)
    start.wait(600)
    t0 = time.perf_counter()
    _, stats = cache_module.EmbeddingCache(root).get_or_compute(encoder, texts)
    done.put((time.perf_counter() - t0, stats["encoded"]))


def _run(model: str, n: int, threads: int, writers: int, claims: bool) -> dict:
    ctx = mp.get_context("spawn")
    start, done = ctx.Barrier(writers), ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as root:
        procs = [
            ctx.Process(target=_writer, args=(root, model, n, threads, claims, start, done))
            for _ in range(writers)
        ]
        for p in procs:
            p.start()
        got = [done.get(timeout=3600) for _ in procs]
        for p in procs:
            p.join(60)
    return {"seconds": round(max(s for s, _ in got), 2), "encoded": [e for _, e in got]}


def main(argv: list[str] | None = None) -> int:
    ap = ScriptParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=json_path, help="write the figures to this JSON file")
    ap.add_argument("--texts", type=positive_int, default=16_384, help="texts (default 16384)")
    ap.add_argument("--model", default="default", help="text encoder (default MiniLM)")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch threads per writer")
    args = ap.parse_args(argv)
    out: dict = {"texts": args.texts, "model": args.model, "threads": args.threads}
    for name, writers, claims in (
        ("alone", 1, True),
        ("together", 2, True),
        ("together_without_claims", 2, False),
    ):
        out[name] = _run(args.model, args.texts, args.threads, writers, claims)
        print(f"{name:>24}: {out[name]['seconds']:8.1f} s, encoded {out[name]['encoded']}")
    alone = out["alone"]["seconds"]
    out["together_vs_alone"] = round(out["together"]["seconds"] / alone, 3)
    out["without_claims_vs_alone"] = round(out["together_without_claims"]["seconds"] / alone, 3)
    print(
        f"two writers together: x{out['together_vs_alone']} of one alone's time "
        f"(x{out['without_claims_vs_alone']} without claims)"
    )
    if args.json:
        write_figures(Path(args.json), out)
    return 0


if __name__ == "__main__":
    run_script(main)
