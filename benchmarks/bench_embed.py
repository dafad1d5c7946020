"""Embedding benchmark: ``python benchmarks/bench_embed.py --json OUT.json``.

Embeds the 1,682 MovieLens-100K item texts ("Toy Story (1995) — Animation, Children's,
Comedy") with the real all-MiniLM-L6-v2 into a fresh temporary cache (cold), then again
with a new encoder object (warm: the model is never loaded). Data: $METAREC_DATA_DIR/ml-100k.

JSON keys: n_texts, cold_seconds (fingerprint + model load + encode), cold_texts_per_s,
encode_texts_per_s (encode only), warm_seconds, speedup (cold / warm; goal >= 50),
warm_loaded_model, bit_identical_warm_vs_cold, bit_identical_cold_vs_fresh_encode (fresh
encode of the distinct texts), max_abs_diff_vs_encode_with_duplicates (batches differ, so
float rounding does), peak_rss_mib, and ae_recall_at_10 (384 -> 64 autoencoder codes,
10-NN recall on held-out items; chance ~ 10 / n_held).
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from metarec.benchmarking import ScriptParser, json_path, positive_int, run_script, write_figures


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def movielens_texts(folder: Path) -> list[str]:
    """Item texts via metarec.data when importable, else parsed from u.item directly."""
    from metarec.text.templates import clean_text, item_texts

    try:
        from metarec.data import load_dataset

        ds = load_dataset("movielens-100k", folder)
        return item_texts(ds.name, ds.item_table, ds.n_items)
    except ImportError:
        import pandas as pd

        genres = [ln.split("|")[0] for ln in (folder / "u.genre").read_text().splitlines() if ln]
        cols = ["item_id", "title", "date", "video", "url", *genres]
        items = pd.read_csv(folder / "u.item", sep="|", names=cols, encoding="latin-1")
        flags = items[genres].to_numpy() == 1  # (n_items, 19) bool
        return [
            clean_text(
                f"{title} — " + ", ".join(g for g, on in zip(genres, row, strict=True) if on)
            )
            for title, row in zip(items["title"], flags, strict=True)
        ]


def _knn(v: np.ndarray, k: int) -> np.ndarray:
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    s = v @ v.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1)[:, :k]


def run(folder: Path, device: str | None, batch_size: int) -> dict:
    from metarec.text import encoder as enc_mod
    from metarec.text.cache import EmbeddingCache
    from metarec.text.encoder import SentenceTransformerEncoder

    texts = movielens_texts(folder)
    res: dict = {"n_texts": len(texts), "device": device or "cpu", "batch_size": batch_size}
    rss0 = _peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(tmp)

        t0 = time.perf_counter()
        cold_enc = SentenceTransformerEncoder("default", device=device, batch_size=batch_size)
        fp = cold_enc.fingerprint
        t_fp = time.perf_counter()
        cold_enc._load()  # timed apart from encoding; get_or_compute would load it anyway
        t_load = time.perf_counter()
        cold, cs = cache.get_or_compute(cold_enc, texts)
        t1 = time.perf_counter()

        enc_mod._DIR_HASH_MEMO.clear()  # a new process would re-hash the model files
        t2 = time.perf_counter()
        warm_enc = SentenceTransformerEncoder("default", device=device, batch_size=batch_size)
        warm, ws = cache.get_or_compute(warm_enc, texts)
        t3 = time.perf_counter()

        # The cache encodes each distinct text once (ML-100K repeats some titles), so the
        # same computation without a cache is: encode the distinct texts, then map back.
        distinct = list(dict.fromkeys(texts))
        pos = {t: i for i, t in enumerate(distinct)}
        fresh = cold_enc.encode(distinct)[[pos[t] for t in texts]]
        fresh_all = cold_enc.encode(texts)  # batches differ from the cache's: not bit-equal
        cache_bytes = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())

    cold_s, warm_s = t1 - t0, t3 - t2
    res.update(
        fingerprint=fp,
        dim=int(cold.shape[1]),
        fingerprint_seconds=round(t_fp - t0, 3),
        model_load_seconds=round(t_load - t_fp, 3),
        encode_seconds=round(t1 - t_load, 3),
        cold_seconds=round(cold_s, 3),
        cold_texts_per_s=round(len(texts) / cold_s, 1),
        encode_texts_per_s=round(len(texts) / (t1 - t_load), 1),
        cold_misses=cs["misses"],
        warm_seconds=round(warm_s, 4),
        warm_hits=ws["hits"],
        warm_texts_per_s=round(len(texts) / warm_s, 1),
        warm_loaded_model=warm_enc._model is not None,
        speedup=round(cold_s / warm_s, 1),
        speedup_goal_met=cold_s / warm_s >= 50,
        bit_identical_warm_vs_cold=warm.tobytes() == cold.tobytes(),
        n_distinct=len(distinct),
        bit_identical_cold_vs_fresh_encode=fresh.tobytes() == cold.tobytes(),
        max_abs_diff_vs_encode_with_duplicates=float(np.abs(fresh_all - cold).max()),
        cache_mib=round(cache_bytes / 2**20, 2),
        peak_rss_mib_before=round(rss0, 1),
        peak_rss_mib=round(_peak_rss_mib(), 1),
    )

    # Autoencoder compression of the real vectors, neighbourhoods checked on held-out items.
    import torch

    from metarec.models.autoencoder import compress

    rng = np.random.default_rng(0)
    order = rng.permutation(len(cold))
    fit, held = cold[order[:1200]], cold[order[1200:]]
    t4 = time.perf_counter()
    _, ae = compress(fit, code_dim=64, epochs=100, seed=0)
    with torch.no_grad():
        codes = ae.encode(torch.from_numpy(held)).numpy()
    truth, got = _knn(held, 10), _knn(codes, 10)
    res.update(
        ae_code_dim=64,
        ae_n_fit=len(fit),
        ae_n_held=len(held),
        ae_seconds=round(time.perf_counter() - t4, 2),
        ae_recall_at_10=round(
            float(np.mean([len(set(truth[i]) & set(got[i])) / 10 for i in range(len(held))])), 3
        ),
        ae_recall_chance=round(10 / (len(held) - 1), 3),
    )
    return res


def format_table(res: dict) -> str:
    rows = [
        ("texts (distinct)", f"{res['n_texts']} ({res['n_distinct']})"),
        ("cold: fingerprint (hash model files)", f"{res['fingerprint_seconds']:.2f} s"),
        ("cold: model load", f"{res['model_load_seconds']:.2f} s"),
        (
            "cold: encode",
            f"{res['encode_seconds']:.2f} s ({res['encode_texts_per_s']:.0f} texts/s)",
        ),
        ("cold: total", f"{res['cold_seconds']:.2f} s ({res['cold_texts_per_s']:.0f} texts/s)"),
        ("warm: total (model not loaded)", f"{res['warm_seconds']:.3f} s"),
        ("speed-up warm vs cold (goal >= 50x)", f"{res['speedup']:.0f}x"),
        ("bit-identical warm vs cold", str(res["bit_identical_warm_vs_cold"])),
        ("bit-identical cold vs fresh encode", str(res["bit_identical_cold_vs_fresh_encode"])),
        (
            "max |diff| vs encode incl. duplicates",
            f"{res['max_abs_diff_vs_encode_with_duplicates']:.1e}",
        ),
        ("cache size", f"{res['cache_mib']:.2f} MiB"),
        ("peak RSS", f"{res['peak_rss_mib']:.0f} MiB"),
        (
            f"AE 384->{res['ae_code_dim']}: held-out 10-NN recall",
            f"{res['ae_recall_at_10']:.3f} (chance {res['ae_recall_chance']:.3f})",
        ),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    ap = ScriptParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=json_path, help="write the figures to this JSON file")
    ap.add_argument("--device", default=None, help="cpu (default), cuda or auto")
    ap.add_argument("--batch-size", type=positive_int, default=64)
    ap.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)

    root = os.environ.get("METAREC_DATA_DIR")
    if not root or not (Path(root) / "ml-100k" / "u.item").is_file():
        print(
            "bench_embed: set METAREC_DATA_DIR to a folder holding ml-100k/u.item", file=sys.stderr
        )
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    res = run(Path(root) / "ml-100k", args.device, args.batch_size)
    print(format_table(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_figures(args.json, res)
    return 0


if __name__ == "__main__":
    run_script(main)
