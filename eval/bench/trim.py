"""`python -m eval.bench.trim --config configs/wentian.yaml`: the dense model with and without vocabulary trimming.

Trims the config's ``dense`` model to the catalog plus the training queries
(``--train-queries``; never the dev queries), then reports for both models:
weights size, load time, encoding speed (titles per second, this machine),
and the dense stage's quality on the config's judged queries (whole corpus
indexed).  Writes ``reports/bench/trim.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from engine.search import SearchEngine
from eval.evaluate import evaluate
from core.formats.judged import read_queries
from indexer.build import ensure_indexes
from core.config import load_config
from indexer.encoder import Encoder
from indexer.vocab_trim import trimmed_path
from core.cli import command


def measure(cfg, queries, texts: list[str]) -> dict:
    ensure_indexes(cfg, ["dense"])
    engine = SearchEngine.from_config(cfg)
    enc, _ = engine.dense_stage("dense")
    loads = []
    for _ in range(3):
        t0 = time.perf_counter()
        Encoder(enc.model_path, max_length=enc.max_length, device="cpu")
        loads.append(time.perf_counter() - t0)
    enc.encode_passages(texts[:64])
    t0 = time.perf_counter()
    enc.encode_passages(texts)
    speed = len(texts) / (time.perf_counter() - t0)
    weights = Path(enc.model_path) / "model.safetensors"
    m = evaluate(engine, queries, ["dense"], progress=False)[0].metrics
    return {
        "model": str(enc.model_path),
        "weights_mb": round(weights.stat().st_size / 2**20, 1),
        "load_s": round(min(loads), 2),
        "titles_per_second": round(speed, 1),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()},
    }


def main(argv=None) -> int:
    ap = command("eval.bench.trim", __doc__, "configs/wentian.yaml")
    ap.add_argument("--train-queries", default="../shared/datasets/wentian/train.tsv")
    ap.add_argument("--out", default="reports/bench/trim.json")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    if not cfg.catalog.path.is_file() or not Path(args.train_queries).is_file():
        print(f"skipped: {cfg.catalog.path} or {args.train_queries} is absent")
        return 0
    queries = read_queries(cfg.eval.queries)
    from indexer.build import load_catalog

    texts = load_catalog(cfg).index_texts()[:1000]
    rows = {"full": measure(cfg, queries, texts)}
    trimmed = dataclasses.replace(
        cfg,
        index_dir=cfg.index_dir.with_name(cfg.index_dir.name + "-trimmed"),
        dense=dataclasses.replace(cfg.dense, trim_vocab=True, trim_queries=Path(args.train_queries).resolve()),
    )
    rows["trimmed"] = measure(trimmed, queries, texts)
    rows["trimmed"]["trim"] = json.loads((trimmed_path(trimmed) / "trim.json").read_text())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    for name, r in rows.items():
        print(name, json.dumps({k: v for k, v in r.items() if k != "trim"}))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
