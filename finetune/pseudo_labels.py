"""`python -m finetune.pseudo_labels --config C --cache <teacher cache> --margin 1.8 --out data/pseudo/<config>.tsv`:
judged pairs for unlabeled queries, from the teacher's scores the distillation job cached.

:mod:`finetune.distill` scores every candidate of the training and query-log queries with the 12-layer teacher
(chunks of ``(query, candidate titles, scores)``).  For a query that no judge labelled — not among the config's
training, dev or evaluation queries — the teacher's top candidate becomes its positive when its logit leads the
second by at least ``--margin``: on WenTian dev the teacher's top product is a judged one 87% of the time at
margin 1.8 (a quarter of the queries), 50% over all (``python -m eval.cascade``'s pseudo-label table; choose
the margin there, on dev, never on the queries evaluated).

Writes the pairs as a judged-pairs TSV (``qid, query, pid``; qids ``pseudo-<n>``) and, with ``--with-train``,
the config's training pairs followed by them (what ``--set finetune.train=<that file>`` trains on), and a card
beside it (``.json``: the cache, margin, counts).  A title shared by several products labels the first.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Iterable

import numpy as np

from core.cli import command, load, run


def read_cache(cache: Path) -> Iterable[tuple[str, list[str], np.ndarray]]:
    """Every cached ``(query, titles, scores)`` of a distillation teacher cache folder, chunk by chunk (a chunk
    cut short by a killed run is skipped: the job scores it again)."""
    from finetune.distill import read_chunk

    for f in sorted(Path(cache).glob("chunk-*.json")):
        for q, titles, scores in read_chunk(f) or []:
            yield q, titles, np.asarray(scores, dtype=np.float32)


def pick(scored: Iterable[tuple[str, list[str], np.ndarray]], margin: float, exclude: set[str]) -> list[tuple]:
    """``(query, title, margin)`` for each query outside ``exclude`` whose teacher's top title leads the second
    by at least ``margin`` (each query once: its first appearance)."""
    out, seen = [], set()
    for q, titles, s in scored:
        if q in exclude or q in seen or len(s) < 2:
            continue
        seen.add(q)
        first, second = np.argsort(-s, kind="stable")[:2]
        lead = float(s[first] - s[second])
        if lead >= margin:
            out.append((q, titles[first], lead))
    return out


def write_pairs(path: Path, picked: list[tuple], pid_of: dict[str, str], train: Path | None = None) -> int:
    """The picked pairs as a judged-pairs TSV, after ``train``'s rows when given; returns the pairs written (a
    title not in the catalog any more is left out)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["qid", "query", "pid"])
        if train is not None:
            with open(train, encoding="utf-8", newline="") as t:
                rows = csv.DictReader(t, delimiter="\t")
                for r in rows:
                    w.writerow([r["qid"], r["query"], r["pid"]])
        for i, (q, title, _) in enumerate(picked):
            if title in pid_of:
                w.writerow([f"pseudo-{i}", q, pid_of[title]])
                n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = command("finetune.pseudo_labels", __doc__, overrides=True)
    ap.add_argument("--cache", required=True, help="a teacher cache folder of finetune.distill (chunk-*.json)")
    ap.add_argument("--margin", type=float, required=True, help="the teacher's top-1 lead over its second (logits)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--with-train", action="store_true", help="the config's training pairs first, then these")
    args = ap.parse_args(argv)

    def body():
        from core.formats.judged import read_queries
        from engine.search import SearchEngine
        from finetune.inputs import load_training_data

        cfg = load(args)
        data = load_training_data(cfg)
        exclude = set(data.train.texts.values()) | set(data.dev.texts.values())
        if cfg.eval.queries and Path(cfg.eval.queries).is_file():
            exclude |= set(read_queries(cfg.eval.queries).texts.values())
        scored = list(read_cache(Path(args.cache)))
        picked = pick(scored, args.margin, exclude)
        engine = SearchEngine.from_config(cfg)
        live = engine.live if engine.live is not None else np.ones(len(engine.products), dtype=bool)
        pid_of: dict[str, str] = {}
        for pid, title, alive in zip(engine.products.ids.tolist(), engine.products.titles.tolist(), live):
            if alive:
                pid_of.setdefault(title, pid)
        train = Path(cfg.finetune.train) if args.with_train else None
        if train is not None and train.suffix != ".tsv":
            raise ValueError(f"--with-train needs judged pairs (.tsv) as finetune.train, not {train}")
        out = Path(args.out)
        n = write_pairs(out, picked, pid_of, train)
        unlabeled = len({q for q, _, _ in scored} - exclude)
        card = {
            "cache": str(args.cache),
            "margin": args.margin,
            "unlabeled_queries_scored": unlabeled,
            "pseudo_labelled": n,
            "share": round(n / max(unlabeled, 1), 3),
            "with_train": str(train) if train is not None else None,
        }
        out.with_suffix(".json").write_text(json.dumps(card, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(json.dumps(card, ensure_ascii=False))

    return run(body, errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
