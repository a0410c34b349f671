"""`python -m eval.bench.training [--random-weights] [--steps N]`: the fine-tuning recipe's speed on this machine.

Runs the real training loops (finetune.biencoder.train, finetune.crossencoder.train:
mixed precision on a GPU, fp32 on a CPU) for a few steps on WenTian queries and
titles, and times cross-encoder scoring (all pairs of a batch of queries, and one
query's 100 candidates as the engine reranks them) at 4 and 12 layers.
Negatives here are random titles: the speed is what is measured, not quality
(quality is measured by `python -m eval` on the trained models).  With
``--random-weights`` the model has the base model's architecture and tokenizer but
random weights, so it runs where the real weights cannot travel (a lent GPU).
Writes reports/bench/training[-<device>].json.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from eval.bench.bm25 import read_id_text
from core.cli import command


def _examples(data: Path, n: int, seed: int = 0):
    from core.formats.judged import read_queries

    ids, titles = read_id_text(data / "wentian" / "corpus.tsv")
    title_of = dict(zip(ids, titles))
    train = read_queries(data / "wentian" / "train.tsv")
    rng = np.random.default_rng(seed)
    out = []
    for qid in list(train.texts)[:n]:
        pid = next(iter(train.relevance[qid]))
        if pid in title_of:
            negs = [titles[j] for j in rng.choice(len(titles), 7, replace=False)]
            out.append((train.texts[qid], title_of[pid], negs, pid))
    return out, titles


def main(argv=None) -> int:
    ap = command("eval.bench.training", __doc__, False)
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--data", default="../shared/datasets", help="folder holding wentian/")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--steps", type=int, default=40, help="timed training steps per model (after 5 warm-up steps)")
    ap.add_argument("--layers", default="4,12")
    ap.add_argument(
        "--ce-batches",
        help="cross-encoder queries x group size per step, e.g. 16x4,12x8 (default: 16x4 on a CPU, 16x4,64x4 on a GPU)",
    )
    ap.add_argument("--out", default="reports/bench")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not (data / "wentian" / "train.tsv").is_file():
        print(f"skipped: {data}/wentian is absent")
        return 0
    import torch
    from sentence_transformers import SentenceTransformer

    from engine.rerank import CrossEncoder
    from eval.bench.dense import random_weights_copy
    from finetune import biencoder, crossencoder
    from core.config import BiEncoderTrainConfig, CrossEncoderTrainConfig

    model = Path(args.model)
    tmp = Path(tempfile.mkdtemp())
    if args.random_weights:
        model = random_weights_copy(model, tmp / "model")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    examples, titles = _examples(data, 4000)
    spec = args.ce_batches or ("16x4,64x4" if device == "cuda" else "16x4")
    ce_batches = [tuple(int(v) for v in b.split("x")) for b in spec.split(",")]
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        },
        "model": str(args.model),
        "random_weights": args.random_weights,
        "steps": args.steps,
        "runs": [],
    }

    def timed(fn, steps: int) -> tuple[float, dict]:
        report = fn(steps)  # the loop times each step (median, the first 3 left out), not the final save
        return report["seconds_per_step"], report

    # bi-encoder: MNRL, batch 32 with one hard negative each (the WenTian recipe), and batch 128 on a GPU
    bi_examples = [biencoder.Example(q, p, n[:1], pid) for q, p, n, pid in examples]
    for batch in [32, 128] if device == "cuda" else [32]:
        st = SentenceTransformer(str(model), device=device)

        def run_bi(steps, st=st, batch=batch):
            cfg = BiEncoderTrainConfig(batch_size=batch, max_steps=steps, eval_every=10**6, warmup_steps=2)
            return biencoder.train(st, bi_examples, cfg, tmp / "bi", progress=False)

        sec, report = timed(run_bi, args.steps)
        result["runs"].append(
            {
                "model": "bi-encoder",
                "layers": 12,
                "batch": batch,
                "precision": report["amp"],
                "seconds_per_step": round(sec, 4),
                "pairs_per_second": round(batch / sec, 1),
            }
        )
        print(result["runs"][-1], flush=True)
        del st

    groups = [crossencoder.Group(q, p, n, 1.0) for q, p, n, _ in examples]
    rng = np.random.default_rng(1)
    score_q = [examples[i][0] for i in rng.choice(len(examples), 2000)]
    score_t = [titles[j] for j in rng.choice(len(titles), 2000)]
    for layers in [int(x) for x in args.layers.split(",")]:
        for batch, group in ce_batches:
            ce = CrossEncoder.from_base(model, layers, max_length=96, device=device)

            def run_ce(steps, ce=ce, batch=batch, group=group, layers=layers):
                cfg = CrossEncoderTrainConfig(
                    num_layers=layers,
                    batch_size=batch,
                    group_size=group,
                    max_steps=steps,
                    eval_every=10**6,
                    warmup_steps=2,
                )
                return crossencoder.train(ce, groups, cfg, tmp / "ce", progress=False)

            sec, report = timed(run_ce, args.steps)
            result["runs"].append(
                {
                    "model": "cross-encoder",
                    "layers": layers,
                    "batch": f"{batch}x{group}",
                    "precision": report["amp"],
                    "seconds_per_step": round(sec, 4),
                    "pairs_per_second": round(batch * group / sec, 1),
                }
            )
            print(result["runs"][-1], flush=True)
        # scoring: the saved model as the engine loads it (fp16 on a GPU)
        served = CrossEncoder.load(tmp / "ce", device=device)
        n = 2000 if device == "cuda" else 400
        served.predict(score_q[:n], score_t[:n])  # warm-up: kernels for every padded length
        for i in range(5):
            served.predict([score_q[i]] * 100, score_t[i * 7 : i * 7 + 100])
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        served.predict(score_q[:n], score_t[:n])
        bulk = (time.perf_counter() - t0) / n
        lat = []
        for i in range(10 if device == "cpu" else 50):
            q = score_q[i]
            t0 = time.perf_counter()
            served.predict([q] * 100, score_t[i * 7 : i * 7 + 100])
            lat.append((time.perf_counter() - t0) * 1000)
        result["runs"].append(
            {
                "model": "cross-encoder scoring",
                "layers": layers,
                "precision": str(next(served.model.parameters()).dtype).replace("torch.", ""),
                "pairs_per_second": round(1 / bulk, 1),
                "one_query_100_candidates_ms_p50": round(float(np.median(lat)), 2),
            }
        )
        print(result["runs"][-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "training" + ("-gpu" if device == "cuda" else "")
    (out / f"{name}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"wrote {out / name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
