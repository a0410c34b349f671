"""`python -m finetune.distill --config C --teacher T --layers 2 --out S`: a small cross-encoder distilled from a
larger one.

The teacher scores the candidates serving will rerank (the union of the bm25 and dense top ``--depth``) of
training queries (the config's judged training file) and of unlabeled real queries (the Taobao query log);
queries that are also evaluation queries are left out.  Teacher scores are cached on disk in chunks, so a
killed run resumes where it stopped.  The student starts from the teacher's first ``--layers`` layers (and its
scoring head) and learns the teacher's order: a listwise KL divergence between the softmax of the teacher's and
the student's scores over groups of a query's candidates (the teacher's best always in the group).  Early
stopping watches the student's agreement with the teacher (mean per-query Pearson correlation) on held-out
distillation queries: no judged dev query is used for training or for choosing the checkpoint.

``--init`` starts the student from a trained cross-encoder instead (the shipped 4-layer one, say: it keeps
its depth and continues from what it learned); ``--label-weight`` adds the listwise cross-entropy of the
judged positive (training queries whose judged product is among the candidates: it is always in its group) to
the KL term, so the student learns the teacher's order and the labels together; ``--teacher-quantize int8``
scores with the teacher's int8 ONNX export (faster; cached apart from the fp32 scores).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from core.config import CrossEncoderTrainConfig, load_config, parse_overrides
from core.cli import command

QUERYLOG = "../shared/datasets/querylog/taobao_queries.tsv"


def distill_queries(
    cfg, data, n_train: int, n_log: int, log_path: Path | None, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Training queries (seeded sample of what ``make finetune`` trains on, ``data``: the config's
    :func:`finetune.inputs.load_training_data` — judged pairs, or a click log's queries before its time cut) and
    unlabeled query-log queries; none of them a dev or evaluation query."""
    from core.formats.judged import read_queries
    from indexer.vocab_trim import read_query_column

    rng = np.random.default_rng(seed)
    held = set(data.dev.texts.values())
    if cfg.eval.queries and Path(cfg.eval.queries).is_file():
        held |= set(read_queries(cfg.eval.queries).texts.values())
    train = sorted(set(data.train.texts.values()) - held)
    out = [train[i] for i in rng.permutation(len(train))[:n_train]]
    extra: list[str] = []
    if log_path is not None and log_path.is_file() and n_log:
        log = sorted(set(read_query_column(log_path)) - held - set(out))
        extra = [log[i] for i in rng.permutation(len(log))[:n_log]]
    return out, extra


def read_chunk(f: Path) -> list | None:
    """One teacher-cache chunk's ``[query, titles, scores]`` rows; None for a chunk cut short (a run killed
    while writing it, before chunks were written whole)."""
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except ValueError:
        return None


def teacher_scores(
    engine, teacher, queries: list[str], cache: Path, chunk: int = 128
) -> list[tuple[str, list[str], np.ndarray]]:
    """Per query: (query, candidate titles, teacher scores); computed chunk by chunk, cached (resumable)."""
    from tqdm import tqdm

    cache.mkdir(parents=True, exist_ok=True)
    out = []
    titles = engine.products.titles
    for start in tqdm(range(0, len(queries), chunk), desc="teacher scores"):
        part = queries[start : start + chunk]
        key = hashlib.sha256(json.dumps(part, ensure_ascii=False).encode()).hexdigest()[:16]
        f = cache / f"chunk-{start:07d}-{key}.json"
        if f.is_file():
            done = read_chunk(f)  # None: cut short by a killed run, scored again
            if done is not None:
                out += [(q, t, np.asarray(s, dtype=np.float32)) for q, t, s in done]
                continue
        cands = [c for c, _, _ in engine.stage_candidates(part, engine.live)]
        pair_q = [q for q, c in zip(part, cands) for _ in c.rows]
        pair_t = titles.take(r for c in cands for r in c.rows)
        scores = teacher.predict(pair_q, pair_t)
        rows, pos = [], 0
        for q, c in zip(part, cands):
            n = len(c.rows)
            rows.append((q, list(pair_t[pos : pos + n]), scores[pos : pos + n].tolist()))
            pos += n
        tmp = f.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, f)  # a chunk is there whole or not at all
        out += [(q, t, np.asarray(s, dtype=np.float32)) for q, t, s in rows]
    return out


def batches(data, batch_size: int, group: int, rng: np.random.Generator, positives: dict | None = None):
    """Groups of ``group`` candidates per query: the teacher's best plus a random draw of the rest, and the
    judged positive where the query has one among its candidates (``positives``: query -> judged titles).  Each
    item: (query, titles, teacher scores, index of the judged positive in the group or -1)."""
    usable = [d for d in data if len(d[1]) >= group]
    positives = positives or {}
    while True:
        order = rng.permutation(len(usable))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            batch = []
            for j in order[i : i + batch_size]:
                q, titles, s = usable[j]
                best = int(np.argmax(s))
                judged = [k for k, t in enumerate(titles) if t in positives.get(q, ())]
                first = [best] + [k for k in judged[:1] if k != best]
                rest = np.setdiff1d(np.arange(len(titles)), first)
                pick = np.concatenate([first, rng.choice(rest, group - len(first), replace=False)]).astype(int)
                label = next((g for g, k in enumerate(pick) if k in judged), -1)
                batch.append((q, [titles[p] for p in pick], s[pick], label))
            yield batch


def kl_loss(student, batch, temperature: float = 1.0, label_weight: float = 0.0):
    """Listwise KL from the teacher's softmax over each group to the student's; with ``label_weight``, plus that
    weight times the listwise cross-entropy of the judged positive, over the groups that hold one."""
    import torch

    g = len(batch[0][1])
    queries = [b[0] for b in batch for _ in b[1]]
    titles = [t for b in batch for t in b[1]]
    raw = student.logits(queries, titles).float().view(len(batch), g)
    logits = raw / temperature
    target = torch.tensor(np.stack([b[2] for b in batch]), dtype=torch.float32) / temperature
    loss = torch.nn.functional.kl_div(
        torch.log_softmax(logits, 1), torch.log_softmax(target, 1), log_target=True, reduction="batchmean"
    )
    labels = torch.tensor([b[3] for b in batch], dtype=torch.long)
    has = labels >= 0
    if label_weight > 0 and bool(has.any()):
        loss = loss + label_weight * torch.nn.functional.cross_entropy(raw[has], labels[has])
    return loss


def judged_titles(data, engine, queries: Sequence[str]) -> dict[str, set[str]]:
    """The judged positive titles of those ``queries`` that are training queries of ``data`` (query text -> titles
    of the judged products the index has)."""
    wanted = set(queries)
    row_of, titles = engine.products.row_map(), engine.products.titles
    out: dict[str, set[str]] = {}
    for qid, pos in data.train.positives.items():
        q = data.train.texts.get(qid)
        if q in wanted:
            out.setdefault(q, set()).update(titles[row_of[p]] for p in pos if p in row_of)
    return out


def agreement(student, held) -> float:
    """Mean per-query Pearson correlation of the student's scores with the teacher's."""
    pair_q = [q for q, ts, _ in held for _ in ts]
    pair_t = [t for _, ts, _ in held for t in ts]
    s = student.predict(pair_q, pair_t)
    out, pos = [], 0
    for _, ts, t in held:
        a = s[pos : pos + len(ts)]
        pos += len(ts)
        if np.std(a) > 0 and np.std(t) > 0:
            out.append(float(np.corrcoef(a, t)[0, 1]))
    return float(np.mean(out)) if out else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = command("finetune.distill", __doc__, None, overrides=True)
    ap.add_argument("--teacher", required=True, help="the cross-encoder folder whose scores the student learns")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-queries", type=int, default=1500)
    ap.add_argument("--log-queries", type=int, default=3000)
    ap.add_argument("--querylog", default=QUERYLOG)
    ap.add_argument("--depth", type=int, default=30, help="bm25 and dense candidates per query (serving's depth)")
    ap.add_argument("--held-out", type=int, default=150, help="distillation queries kept for early stopping")
    ap.add_argument("--max-steps", type=int, default=1500)
    ap.add_argument("--max-minutes", type=float, default=15.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument(
        "--init",
        default=None,
        help="start the student from this cross-encoder (e.g. the shipped smaller one) instead of the teacher's "
        "first --layers layers",
    )
    ap.add_argument(
        "--label-weight",
        type=float,
        default=0.0,
        help="add this weight times the listwise cross-entropy of the judged positive (training queries)",
    )
    ap.add_argument(
        "--teacher-quantize",
        choices=("none", "int8"),
        default="none",
        help="score with the teacher's ONNX export, fp32 (its exact scores) or int8 weights (faster)",
    )
    args = ap.parse_args(argv)

    from engine.onnx_models import OnnxCrossEncoder
    from engine.rerank import CrossEncoder
    from engine.search import SearchEngine
    from finetune import loop
    from finetune.inputs import load_training_data
    from indexer.encoder import ModelMissingError

    overrides = parse_overrides(args.set)
    overrides.setdefault("rerank", {}).update({"depth": args.depth, "ranker": None, "model": None})
    cfg = load_config(args.config, **overrides)
    engine = SearchEngine.from_config(cfg)
    teacher_path = Path(args.teacher)
    try:  # the teacher's exact scores, faster: its fp32 ONNX export where there is one (or its int8 weights)
        teacher = OnnxCrossEncoder(teacher_path, args.max_length, 128, args.teacher_quantize)
    except ModelMissingError:  # no export: torch
        if args.teacher_quantize != "none":
            raise
        teacher = CrossEncoder.load(teacher_path, max_length=args.max_length)
    t0 = time.perf_counter()
    training = load_training_data(cfg)  # read once: the queries and, with --label-weight, their judged products
    train_q, log_q = distill_queries(cfg, training, args.train_queries, args.log_queries, Path(args.querylog))
    queries = train_q + log_q
    quant = "" if args.teacher_quantize == "none" else f"-{args.teacher_quantize}"
    cache = Path(args.out + ".teacher-cache") / f"{teacher.fingerprint()}{quant}-d{args.depth}"
    data = teacher_scores(engine, teacher, queries, cache)
    scoring_min = (time.perf_counter() - t0) / 60
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data))
    held = [data[i] for i in order[: args.held_out]]
    train = [data[i] for i in order[args.held_out :]]
    if args.init:  # continue a trained cross-encoder (its own depth)
        student = CrossEncoder.load(args.init, max_length=args.max_length, device="cpu")
        student.model.train()
    else:
        student = CrossEncoder.from_base(teacher_path, num_layers=args.layers, max_length=args.max_length, device="cpu")
    layers = int(student.model.config.num_hidden_layers)
    positives = judged_titles(training, engine, train_q) if args.label_weight > 0 else {}
    student.model.get_input_embeddings().weight.requires_grad_(False)
    settings = CrossEncoderTrainConfig(
        num_layers=layers,
        lr=args.lr,
        batch_size=args.batch_size,
        group_size=args.group,
        max_length=args.max_length,
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        warmup_steps=50,
        eval_every=max(50, args.max_steps // 6),
    )
    params = [p for p in student.model.parameters() if p.requires_grad]
    out = Path(args.out)
    card = {
        "distilled_from": str(teacher_path),
        "teacher_fingerprint": teacher.fingerprint(),
        "teacher_runtime": f"onnx {args.teacher_quantize}" if isinstance(teacher, OnnxCrossEncoder) else "torch",
        "layers": layers,
        "init": str(args.init) if args.init else f"the teacher's first {layers} layers",
        "queries": {"train": len(train_q), "querylog": len(log_q), "held_out_for_early_stopping": len(held)},
        "pairs": int(sum(len(d[1]) for d in data)),
        "depth": args.depth,
        "loss": "listwise KL to the teacher"
        + (f" + {args.label_weight} x listwise cross-entropy of the judged positive" if args.label_weight else ""),
        "judged_queries": len(positives),
        "teacher_scoring_minutes": round(scoring_min, 1),
    }
    result = loop.run(
        student.model,
        params,
        lambda r: batches(train, args.batch_size, args.group, r, positives),
        lambda b: kl_loss(student, b, label_weight=args.label_weight),
        settings,
        out,
        save=lambda folder: student.save(folder, card=card),
        evaluate=lambda: agreement(student, held),
        log_path=Path(args.out + ".log.json"),
        desc=f"student ({layers} layers)",
        extra_log=card,
    )
    card.update({"training": {k: v for k, v in result.items() if k != "log"}})
    (out / "model_card.json").write_text(json.dumps(card, indent=1, ensure_ascii=False), encoding="utf-8")
    print(json.dumps(card, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
