"""`make eval-suggest [CONFIG=...]`: query suggestions measured by typing held-out queries.

The targets are the config's judged queries (``eval.queries``; WenTian dev: none of them is in the Taobao
query log).  The suggestions are built from the config (:func:`indexer.suggest.build_suggest_index`) with the
targets' own texts left out of the log, so no target is ever suggested because it was logged.  Each target is
typed three ways, one key at a time:

- **hanzi**: its characters;
- **pinyin**: its full toneless pinyin (Latin and digits as they are);
- **initials**: the first letter of each Han character's pinyin (Latin and digits as they are).

Measures (spaces ignored on both sides):

- **keystrokes saved**: after each key the shopper takes the longest suggestion that is a prefix of the target,
  when that costs fewer keys than typing on (one key to pick it), then types on from there in the same mode;
  ``1 − keys used / keys of the whole target``;
- **success@8 and MRR** at each typed length: a suggestion among the first 8 that is a prefix of the target
  (or the target) and not what is typed already;
- **search check**: how often the top suggestion's own search (``SearchEngine.query``) finds a judged product of
  the target in its top 10, at 2 and 4 typed characters, against the target's own search.

Systems: **ours** (:class:`engine.suggest.Suggester`) and **most popular completion** (the log's queries that
start with the typed characters, most searched first: the classic baseline; it cannot read pinyin).  Writes
``suggest.json``, ``report.md`` and ``suggest.png`` under ``--out``.
"""

from __future__ import annotations

import bisect
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from core.bootstrap import bootstrap_ci, paired_bootstrap
from core.cli import command, load, run

MODES = ("hanzi", "pinyin", "initials")
SYSTEMS = ("ours", "most_popular")
LENGTHS = tuple(range(1, 9))
K = 8


class MostPopular:
    """The log's queries starting with the typed text, most searched first."""

    def __init__(self, counts: Counter):
        self.texts = sorted(t.replace(" ", "") for t in counts)
        merged: Counter = Counter()
        for t, n in counts.items():
            merged[t.replace(" ", "")] += n
        self.counts = np.array([merged[t] for t in self.texts], dtype=np.float64)

    def __call__(self, typed: str, k: int) -> list[str]:
        lo = bisect.bisect_left(self.texts, typed)
        hi = bisect.bisect_left(self.texts, typed + "\U0010ffff")
        if hi <= lo:
            return []
        top = lo + np.argsort(-self.counts[lo:hi], kind="stable")[:k]
        return [self.texts[i] for i in top]


def mode_tail(units: list[str], target: str, mode: str, pos: int) -> str:
    """What the shopper types for ``target[pos:]`` in ``mode`` (units: one pinyin syllable per character)."""
    if mode == "hanzi":
        return target[pos:]
    if mode == "pinyin":
        return "".join(units[pos:])
    return "".join(u[:1] if "\u4e00" <= c <= "\u9fff" else u for u, c in zip(units[pos:], target[pos:]))


def simulate(system, target: str, units: list[str], mode: str) -> tuple[int, int]:
    """(keys used, keys of the whole target) typing ``target`` with ``system(typed, k) -> texts``."""
    total = len(mode_tail(units, target, mode, 0))
    pos, typed, used = 0, "", 0
    while True:
        tail = mode_tail(units, target, mode, pos)
        if len(typed) >= len(tail):
            return used, total
        typed = tail[: len(typed) + 1]
        used += 1
        left = len(tail) - len(typed)
        best = None
        for s in system(target[:pos] + typed, K):
            s = s.replace(" ", "")
            if target.startswith(s) and len(s) > pos and (best is None or len(s) > len(best)):
                best = s
        if best is not None and 1 + len(mode_tail(units, target, mode, len(best))) < left:
            used += 1
            pos, typed = len(best), ""


def first_useful(found: list[str], target: str, typed: str) -> int:
    """1-based rank of the first suggestion that is a prefix of the target and not the typed text; 0: none."""
    for r, s in enumerate(found, start=1):
        s = s.replace(" ", "")
        if target.startswith(s) and s != typed:
            return r
    return 0


def one_key_bound(texts: list[str], targets: list[str], mode: str) -> float:
    """success@8 at one key of the best possible fixed lists: for each first key (a character, or a letter), the
    8 suggestions that are a prefix of the most targets typed with it, chosen with hindsight (greedy cover).  An
    upper bound for any ranking of these suggestions that does not know the shopper."""
    from collections import defaultdict

    from indexer.suggest_index import syllables

    by_char: dict[str, set] = defaultdict(set)
    for s in texts:
        by_char[s[0]].add(s)
    groups: dict[str, list] = defaultdict(list)
    for t in targets:
        groups[mode_tail(syllables(t), t, mode, 0)[:1]].append(t)
    covered = 0
    for key, ts in groups.items():
        cover: dict[str, set] = defaultdict(set)
        for i, t in enumerate(ts):
            for s in by_char.get(t[0], ()):
                if t.startswith(s) and s != key:
                    cover[s].add(i)
        got: set = set()
        for _ in range(K):
            best = max(cover, key=lambda s: len(cover[s] - got), default=None)
            if best is None or not cover[best] - got:
                break
            got |= cover[best]
        covered += len(got)
    return covered / max(len(targets), 1)


def evaluate(cfg, engine=None, limit: int | None = None, search_limit: int = 300, progress: bool = True) -> dict:
    from tqdm import tqdm

    from core.formats.judged import read_queries
    from engine.suggest import Suggester
    from indexer.suggest import build_suggest_index, clean, clicklog_queries, read_query_log
    from indexer.suggest_index import syllables

    from engine.search import SearchEngine

    t2s = cfg.text.traditional_to_simplified
    judged = read_queries(cfg.eval.queries)
    qids = sorted(judged.texts)[: limit or None]
    targets = {q: clean(judged.texts[q], t2s).replace(" ", "") for q in qids}
    targets = {q: t for q, t in targets.items() if len(t) >= 2}
    held_out = {clean(judged.texts[q], t2s) for q in qids}
    engine = engine or SearchEngine.from_config(cfg)
    t0 = time.perf_counter()
    index = build_suggest_index(cfg, engine.bm25, progress=progress, exclude=held_out)
    build_s = time.perf_counter() - t0
    ours_s = Suggester(index, cfg.suggest, t2s)
    log = read_query_log(cfg.suggest.log) if cfg.suggest.log else clicklog_queries(cfg.finetune.train)
    counts = Counter(c for c in (clean(q, t2s) for q in log) if c and c not in held_out)
    base = MostPopular(counts)
    timings: list[float] = []

    def ours(typed: str, k: int) -> list[str]:
        t = time.perf_counter()
        out = [s.text for s in ours_s.suggest(typed, k)]
        timings.append((time.perf_counter() - t) * 1000)
        return out

    systems = {"ours": ours, "most_popular": base}
    res: dict = {
        "targets": len(targets),
        "suggestions": len(index),
        "keys": index.meta["n_keys"],
        "build_seconds": round(build_s, 1),
        "log_queries": len(log),
        "modes": {},
    }
    for mode in MODES:
        saved = {s: [] for s in SYSTEMS}
        rank = {s: {n: [] for n in LENGTHS} for s in SYSTEMS}
        for q, target in tqdm(targets.items(), desc=f"type {mode}", disable=not progress):
            units = syllables(target)
            full = mode_tail(units, target, mode, 0)
            for name, system in systems.items():
                used, total = simulate(system, target, units, mode)
                saved[name].append(1.0 - used / total)
                for n in LENGTHS:
                    if n < len(full):
                        typed = full[:n]
                        rank[name][n].append(first_useful(system(typed, K), target, typed))
        block: dict = {"systems": {}}
        for name in SYSTEMS:
            arr = np.array(saved[name])
            _, lo, hi = bootstrap_ci(arr)
            block["systems"][name] = {
                "keystrokes_saved": round(float(arr.mean()), 4),
                "ci": [round(lo, 4), round(hi, 4)],
                "by_length": {
                    n: {
                        "cases": len(r),
                        "success@8": round(float(np.mean(np.array(r) > 0)), 4) if r else None,
                        "mrr": round(float(np.mean([1.0 / x if x else 0.0 for x in r])), 4) if r else None,
                    }
                    for n, r in rank[name].items()
                },
            }
        block["ours_minus_baseline"] = paired_bootstrap(np.array(saved["most_popular"]), np.array(saved["ours"]))
        res["modes"][mode] = block
    ours_all = np.mean([res["modes"][m]["systems"]["ours"]["keystrokes_saved"] for m in MODES])
    base_all = np.mean([res["modes"][m]["systems"]["most_popular"]["keystrokes_saved"] for m in MODES])
    res["keystrokes_saved_all_modes"] = {"ours": round(float(ours_all), 4), "most_popular": round(float(base_all), 4)}
    res["latency_ms"] = {
        "calls": len(timings),
        "p50": round(float(np.percentile(timings, 50)), 3),
        "p99": round(float(np.percentile(timings, 99)), 3),
    }
    texts = sorted({t.replace(" ", "") for t in index.texts})
    res["one_key_bound"] = {m: round(one_key_bound(texts, list(targets.values()), m), 4) for m in MODES}
    res["search_check"] = search_check(engine, judged, targets, systems, search_limit, progress)
    return res


def search_check(engine, judged, targets: dict, systems: dict, limit: int, progress: bool) -> dict:
    """Share of targets whose judged product is in the top 10 of the top suggestion's search (2 and 4 typed
    characters), and of the target's own search."""
    from tqdm import tqdm

    chosen = sorted(targets)[:limit]
    found = {f"{s}@{n}": [] for s in SYSTEMS for n in (2, 4)}
    found["the target itself"] = []
    cache: dict[str, set] = {}

    def top10(text: str) -> set:
        if text not in cache:
            cache[text] = {h.product_id for h in engine.query(text, k=10).hits}
        return cache[text]

    for q in tqdm(chosen, desc="search check", disable=not progress):
        target, rel = targets[q], {p for p, r in judged.relevance[q].items() if r > 0}
        found["the target itself"].append(bool(top10(target) & rel))
        for name, system in systems.items():
            for n in (2, 4):
                top = system(target[:n], 1) if len(target) > n else [target]
                found[f"{name}@{n}"].append(bool(top and top10(top[0]) & rel))
    return {"queries": len(chosen), **{k: round(float(np.mean(v)), 4) if v else None for k, v in found.items()}}


def write_report(out_dir: Path, res: dict, config: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "suggest.json").write_text(json.dumps({"config": config, **res}, indent=1, ensure_ascii=False) + "\n")
    m = res["modes"]
    lines = [
        f"# Query suggestions: {config}",
        "",
        f"{res['targets']} held-out judged queries typed key by key (their texts left out of the log); "
        f"{res['suggestions']} suggestions ({res['keys']} typed keys) built from {res['log_queries']} logged "
        f"queries and the catalog in {res['build_seconds']} s; ours p50 / p99 {res['latency_ms']['p50']} / "
        f"{res['latency_ms']['p99']} ms per keystroke in-process ({res['latency_ms']['calls']} calls).",
        "",
        "| mode | keystrokes saved: ours [95% CI] | most popular completion | ours − baseline [95% CI] | ratio |",
        "| --- | --- | --- | --- | ---: |",
    ]
    for mode in MODES:
        o, b = m[mode]["systems"]["ours"], m[mode]["systems"]["most_popular"]
        d = m[mode]["ours_minus_baseline"]
        ratio = f"{o['keystrokes_saved'] / b['keystrokes_saved']:.2f}×" if b["keystrokes_saved"] > 0 else "∞"
        lines.append(
            f"| {mode} | {o['keystrokes_saved']:.4f} [{o['ci'][0]:.4f}, {o['ci'][1]:.4f}] | "
            f"{b['keystrokes_saved']:.4f} | {d['diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] | {ratio} |"
        )
    a = res["keystrokes_saved_all_modes"]
    ratio = f"{a['ours'] / a['most_popular']:.2f}×" if a["most_popular"] > 0 else "∞"
    lines += [f"| all three modes | {a['ours']:.4f} | {a['most_popular']:.4f} | | {ratio} |", ""]
    lines += [
        "success@8 / MRR of a suggestion that is a prefix of the target, by keys typed:",
        "",
        "| mode | system | " + " | ".join(str(n) for n in LENGTHS) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in LENGTHS) + " |",
    ]
    for mode in MODES:
        for name in SYSTEMS:
            by = m[mode]["systems"][name]["by_length"]
            cells = [
                f"{by[n]['success@8']:.3f} / {by[n]['mrr']:.3f}" if by[n]["success@8"] is not None else "–"
                for n in LENGTHS
            ]
            lines.append(f"| {mode} | {name} | " + " | ".join(cells) + " |")
    b = res["one_key_bound"]
    lines += [
        "",
        f"At one key, the best fixed 8 suggestions per first key, chosen with hindsight on the targets, reach "
        f"success@8 {b['hanzi']:.3f} (hanzi) and {b['initials']:.3f} (initials): an upper bound for any ranking "
        "that does not know the shopper.",
    ]
    sc = res["search_check"]
    lines += [
        "",
        f"Search check ({sc['queries']} targets): a judged product in the top 10 of the top suggestion's search",
        "",
        "| after | ours | most popular completion |",
        "| --- | ---: | ---: |",
        f"| 2 characters | {sc['ours@2']} | {sc['most_popular@2']} |",
        f"| 4 characters | {sc['ours@4']} | {sc['most_popular@4']} |",
        f"| the whole target (its own search) | {sc['the target itself']} | |",
        "",
        "![success@8 by keys typed](suggest.png)",
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")
    _plot(res, out_dir / "suggest.png")


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for mode, color in zip(MODES, ("C0", "C1", "C2")):
        for name, style in zip(SYSTEMS, ("-", ":")):
            by = res["modes"][mode]["systems"][name]["by_length"]
            xs = [n for n in LENGTHS if by[n]["success@8"] is not None]
            ax.plot(xs, [by[n]["success@8"] for n in xs], style, color=color, marker="o", label=f"{mode}, {name}")
    ax.set(xlabel="keys typed", ylabel="success@8", title="a suggestion that is a prefix of the target")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.suggest", __doc__, overrides=True)
    ap.add_argument("--out", default=None, help="default reports/suggest/<config name>")
    ap.add_argument("--limit", type=int, default=None, help="at most this many targets")
    ap.add_argument("--search-limit", type=int, default=300, help="targets in the search check")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    def body():
        cfg = load(args)
        res = evaluate(cfg, limit=args.limit, search_limit=args.search_limit, progress=not args.no_progress)
        out = Path(args.out) if args.out else cfg.root / "reports" / "suggest" / cfg.name
        write_report(out, res, str(cfg.source))
        for mode in MODES:
            s = res["modes"][mode]["systems"]
            print(
                f"{mode}: keystrokes saved ours {s['ours']['keystrokes_saved']:.4f}, "
                f"most popular {s['most_popular']['keystrokes_saved']:.4f}"
            )
        print(f"wrote {out}/suggest.json, report.md, suggest.png")
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
