"""`python -m eval.query_ids dump|diff`: does a change keep what `query()` returns?

- ``dump --config C --queries Q.tsv [-n 50] [-k 10] --out ids.json``: the top-k product ids `query()` returns for the
  first ``n`` distinct queries of a judged-queries file, from the code this command runs in (run it in a worktree
  of the commit before a change, then in the commit after, over the same built index).
- ``diff A.json B.json``: how many queries got the same ids in the same order; exit status 1 when one differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from core.cli import command, run


def dump(config: str, queries: str, n: int = 50, k: int = 10) -> dict[str, list[str]]:
    from core.formats.judged import read_queries
    from engine.search import SearchEngine

    texts = list(dict.fromkeys(read_queries(queries).texts.values()))[:n]
    engine = SearchEngine.from_config(config)
    return {q: [h.product_id for h in engine.query(q, k=k)] for q in texts}


def diff(a: dict[str, list[str]], b: dict[str, list[str]]) -> list[str]:
    """The queries whose ids differ (or that only one side has)."""
    return sorted(q for q in set(a) | set(b) if a.get(q) != b.get(q))


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.query_ids", __doc__, False)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="top-k ids of the first n queries to a JSON file")
    d.add_argument("--config", required=True)
    d.add_argument("--queries", required=True)
    d.add_argument("-n", type=int, default=50)
    d.add_argument("-k", type=int, default=10)
    d.add_argument("--out", required=True)
    c = sub.add_parser("diff", help="compare two dumps")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args(argv)

    def body():
        if args.cmd == "dump":
            ids = dump(args.config, args.queries, args.n, args.k)
            Path(args.out).write_text(json.dumps(ids, ensure_ascii=False, indent=1), encoding="utf-8")
            print(f"{len(ids)} queries -> {args.out}")
            return 0
        a, b = (json.loads(Path(p).read_text(encoding="utf-8")) for p in (args.a, args.b))
        changed, n = diff(a, b), len(set(a) | set(b))
        print(f"{n - len(changed)}/{n} queries return the same ids in the same order")
        for q in changed[:10]:
            print(f"  differs: {q!r}: {a.get(q)} -> {b.get(q)}")
        return 1 if changed else 0

    return run(body, errors=(OSError, json.JSONDecodeError))


if __name__ == "__main__":
    sys.exit(main())
