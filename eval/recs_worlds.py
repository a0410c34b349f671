"""`make eval-recs-worlds`: recommendations measured over several simulated demo worlds, pooled.

One demo click log holds ~340 for-you targets in its test window: two systems 0.01 apart in HR@10 cannot be told
apart on it.  This command draws the demo's simulated shoppers again with other seeds (``--seeds``; the same
generated catalog, :func:`eval.sim.demo_data.simulate_clicks`), runs :func:`eval.recs.evaluate` on each world's
own time split, and pools the cases of every world: per task, HR@10 of each system with bootstrap intervals and
ours against each baseline, paired case by case.  Which ``implicit`` baseline is best is decided on the pooled
cases (not per world, which would pick each world's lucky one).  ``--valid`` measures the window before the test
window instead (where settings are chosen).

Needs the generated demo catalog (``make demo-data``; any ``--products``/seed the catalog was generated with is
found from the index).  Writes ``worlds.json``, ``report.md`` and ``worlds.png`` under ``--out``; the click logs
go to ``--out``/logs.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from core.bootstrap import bootstrap_ci, paired_bootstrap
from core.cli import command, load, run

from eval.recs import SYSTEMS, evaluate, grouped_bars

DEFAULT_SEEDS = "11,21,22,23,31,32,33,34"  # 11: the click seed of `make demo-data`'s own log


class NotTheDemoCatalog(ValueError):
    pass


def demo_products(products, seeds=(7,)):
    """The generator's products of the indexed catalog (the same ids and titles), or an error naming why not."""
    from eval.sim.demo_data import generate_catalog

    for seed in seeds:
        gen = generate_catalog(len(products), seed)
        if [p.pid for p in gen] == list(products.ids) and [p.title for p in gen] == list(products.titles):
            return gen
    raise NotTheDemoCatalog(
        f"the indexed catalog ({len(products)} products) is not the generated demo catalog (catalog seeds "
        f"{list(seeds)}): simulated worlds need `make demo-data`'s catalog"
    )


def world_logs(catalog, seeds: list[int], out: Path, users: int) -> dict[int, Path]:
    """A click log per seed, drawn over ``catalog`` (kept where already written)."""
    from core.formats.clicklog import write_clicklog
    from eval.sim.demo_data import simulate_clicks

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for seed in seeds:
        path = out / f"clicks-{seed}-{users}.jsonl"
        if not path.is_file():
            write_clicklog(simulate_clicks(catalog, n_users=users, seed=seed), path)
        paths[seed] = path
    return paths


def pool(worlds: dict[int, dict]) -> dict:
    """Per task: the pooled cases' HR@10 per system with intervals and ours against each baseline."""
    out: dict = {}
    tasks = next(iter(worlds.values()))["tasks"]
    for task in tasks:
        hits = {s: np.concatenate([np.asarray(w["tasks"][task]["hits"][s]) for w in worlds.values()]) for s in SYSTEMS}
        block: dict = {"cases": len(hits["ours"]), "systems": {}, "vs": {}}
        for s in SYSTEMS:
            mean, lo, hi = bootstrap_ci(hits[s])
            block["systems"][s] = {"hr@10": round(mean, 4), "hr_ci": [round(lo, 4), round(hi, 4)]}
            if s != "ours":
                block["vs"][s] = {k: round(v, 4) for k, v in paired_bootstrap(hits[s], hits["ours"]).items()}
        block["best_implicit"] = max(("item_knn", "als"), key=lambda s: hits[s].mean())
        out[task] = block
    return out


def write_report(out: Path, res: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "worlds.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    split = "validation windows" if res["valid"] else "test windows"
    lines = [
        f"# Recommendations over {len(res['worlds'])} simulated worlds ({split})",
        "",
        "**The shoppers are simulated** (eval.sim.demo_data, click seeds "
        f"{', '.join(str(s) for s in res['worlds'])}; {res['users']} shoppers each, the same catalog): each world's "
        "own time split, every target ranked against the whole catalog, the cases of all worlds pooled.",
        "",
        "| task | cases | ours | popularity | item-kNN | ALS | ours − best implicit [95% CI] | p |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for task, b in res["pooled"].items():
        m = b["systems"]
        best = b["best_implicit"]
        v = b["vs"][best]
        lines.append(
            f"| {task} | {b['cases']} | **{m['ours']['hr@10']:.4f}** [{m['ours']['hr_ci'][0]:.4f}, "
            f"{m['ours']['hr_ci'][1]:.4f}] | {m['popularity']['hr@10']:.4f} | {m['item_knn']['hr@10']:.4f} | "
            f"{m['als']['hr@10']:.4f} | {v['diff']:+.4f} [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}] ({best}) | "
            f"{v['p_value']:.3f} |"
        )
    lines += ["", "Per world (HR@10, ours / item-kNN / ALS / popularity):", ""]
    lines.append("| world | " + " | ".join(res["pooled"]) + " |")
    lines.append("| --- |" + " --- |" * len(res["pooled"]))
    for seed, w in res["worlds"].items():
        cells = []
        for task in res["pooled"]:
            m = w[task]
            cells.append(" / ".join(f"{m[s]:.4f}" for s in ("ours", "item_knn", "als", "popularity")))
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += ["", "![ours − each baseline, pooled](worlds.png)", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    _plot(res, out / "worlds.png")


def _plot(res: dict, path: Path) -> None:
    tasks = list(res["pooled"])
    series = {}
    for s in ("popularity", "item_knn", "als"):
        v = [res["pooled"][t]["vs"][s] for t in tasks]
        series[f"ours − {s}"] = ([x["diff"] for x in v], [x["ci_low"] for x in v], [x["ci_high"] for x in v])
    title = f"pooled over {len(res['worlds'])} simulated worlds"
    grouped_bars(path, tasks, series, "HR@10 difference (95% CI)", title, zero=True)


def measure(cfg, seeds: list[int], out: Path, users: int, valid: bool, progress: bool, limit: int | None = None):
    from engine.search import SearchEngine

    catalog = demo_products(SearchEngine.from_config(cfg).products)
    logs = world_logs(catalog, seeds, out / "logs", users)
    worlds = {}
    for seed, path in logs.items():
        wcfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, train=path))
        worlds[seed] = evaluate(wcfg, progress=progress, valid=valid, limit=limit)
        if progress:
            fy = worlds[seed]["tasks"]["for_you"]["systems"]
            print(f"world {seed}: for_you " + ", ".join(f"{s} {m['hr@10']:.4f}" for s, m in fy.items()), flush=True)
    return {
        "valid": valid,
        "users": users,
        "pooled": pool(worlds),
        "worlds": {
            seed: {t: {s: m["hr@10"] for s, m in b["systems"].items()} for t, b in w["tasks"].items()}
            for seed, w in worlds.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.recs_worlds", __doc__, overrides=True)
    ap.add_argument("--seeds", default=DEFAULT_SEEDS, help="click seeds of the simulated worlds, comma-separated")
    ap.add_argument("--users", type=int, default=400, help="shoppers per world")
    ap.add_argument("--valid", action="store_true", help="the window before the test window (tuning)")
    ap.add_argument("--out", default=None, help="default reports/recs/<config name>-worlds")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    def body():
        cfg = load(args)
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        out = Path(args.out) if args.out else cfg.root / "reports" / "recs" / f"{cfg.name}-worlds"
        res = measure(cfg, seeds, out, args.users, args.valid, not args.no_progress)
        write_report(out, res)
        for task, b in res["pooled"].items():
            v = b["vs"][b["best_implicit"]]
            print(
                f"{task} ({b['cases']} cases): ours {b['systems']['ours']['hr@10']:.4f}, "
                f"− {b['best_implicit']} {v['diff']:+.4f} [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}]"
            )
        print(f"wrote {out}/worlds.json, report.md, worlds.png")
        return 0

    return run(body, errors=(NotTheDemoCatalog,))


if __name__ == "__main__":
    sys.exit(main())
