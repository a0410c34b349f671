"""`python -m finetune.recs --config C [--from-store]`: build the recommendation models and swap them in.

The models themselves (item neighbours, bought-together pairs, ALS item factors) are built by
:mod:`finetune.recs_build`; here: the events they are built from (a click log for ``make finetune``, the event
store for ``make retrain``, forgotten users left out) and the swap into ``models/<config>/recs`` through a
staging folder.  A build replaces the serving one only when it saw at least half its engagements and the
same recipe, built without the last ``recs.guard_days``, beats popularity on them (:mod:`finetune.recs_guard`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from core.config import RecsConfig
from engine.recs import models_dir, save
from finetune.recs_build import build


def build_and_save(
    out: Path,
    ids: Sequence[str],
    users,
    rows,
    events,
    ts,
    s: RecsConfig | None = None,
    categories=None,
    built_at: float | None = None,
    guard: dict | None = None,
) -> dict:
    """:func:`build`, written to ``out`` through a staging folder swapped in at the end (a crash leaves the
    previous models in place).  ``built_at`` (default now): when its events were read — a user forgotten
    later pauses the build (:mod:`engine.forgotten`)."""
    import os
    import shutil

    built_at = time.time() if built_at is None else float(built_at)
    out = Path(out)
    stage = out.with_name(out.name + ".staging")
    shutil.rmtree(stage, ignore_errors=True)
    similar, together, items, card = build(users, rows, events, ts, len(ids), s, categories=categories)
    card["built_at"] = built_at
    if guard is not None:
        card["guard"] = guard
    save(stage, similar, together, items, card, ids)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(stage, out)
    shutil.rmtree(old, ignore_errors=True)
    return card


def events_of_log(path: Path, row_of: dict) -> tuple:
    """(users, rows, events, times) of a click log's events on products the index has."""
    from core.formats.clicklog import read_clicklog

    ev = [e for e in read_clicklog(path) if e.product_id in row_of]
    return (
        [e.user_id for e in ev],
        [row_of[e.product_id] for e in ev],
        [e.event for e in ev],
        [e.timestamp for e in ev],
    )


def events_of_store(user_events, until: float) -> tuple:
    """(hashed users, rows, events, times) of the event store's credited events before ``until``, in pages."""
    from core.formats.clicklog import EVENTS

    row_of = user_events.row_map()
    users, rows, events, ts = [], [], [], []
    for page in user_events.event_pages(until):
        for u, p, c, t in page:
            r = row_of.get(p)
            if r is not None and c > 0:
                users.append(u), rows.append(r), events.append(EVENTS[c]), ts.append(t)
    return users, rows, events, ts


def without_forgotten(src: tuple, forgotten: dict[str, float], key) -> tuple[tuple, int]:
    """The events of ``src`` (users, rows, events, times) less those of forgotten users (``forgotten``: hashed
    keys, :func:`engine.forgotten.read`; ``key``: a user id -> its hashed key, None where the ids are already
    keys), and how many were left out."""
    if not forgotten:
        return src, 0
    users = src[0]
    hashed: dict[str, str] = {}
    drop = np.zeros(len(users), dtype=bool)
    for i, u in enumerate(users):
        h = hashed.get(u)
        if h is None:
            h = hashed[u] = u if key is None else key(u)
        drop[i] = h in forgotten
    if not drop.any():
        return src, 0
    keep = np.flatnonzero(~drop)
    return tuple([part[i] for i in keep] for part in src), int(drop.sum())


def shrunk(out: Path, engagements: int, keep: float = 0.5) -> str | None:
    """Why a build from ``engagements`` events should not replace the serving one at ``out`` (None: it may):
    it saw less than ``keep`` of the serving build's engagements — a purged or wrong store, a truncated log."""
    import json

    card = Path(out) / "model_card.json"
    if not card.is_file():
        return None
    before = int(json.loads(card.read_text(encoding="utf-8")).get("engagements", 0))
    if engagements < keep * before:
        return f"{engagements} engagements against the serving build's {before}"
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m finetune.recs --config C [--from-store]`: build the recommendation models (module doc)."""
    import json

    from core.cli import command, load, run

    ap = command("finetune.recs", __doc__, overrides=True)
    ap.add_argument(
        "--from-store",
        action="store_true",
        help="read the event store (what `make retrain` does) instead of the config's click log",
    )
    ap.add_argument(
        "--force",
        action="store_true",
        help="swap the build in even when it saw far fewer engagements than the serving one",
    )
    args = ap.parse_args(argv)

    def body():
        from engine import forgotten
        from engine.search import SearchEngine
        from finetune import recs_guard
        from finetune.inputs import is_clicklog

        cfg = load(args)
        engine = SearchEngine.from_config(cfg, load_models=False)
        products = engine.products
        built_at = time.time()
        gone = forgotten.read(cfg)
        if args.from_store:
            src = events_of_store(engine.user_events(), built_at)
            where = "the event store"
        else:
            train = cfg.finetune.train
            if train is None or not Path(train).is_file():
                print(f"error: {cfg.source}: finetune.train ({train}) is not a file; use --from-store", file=sys.stderr)
                return 2
            if not is_clicklog(Path(train), cfg.finetune.format):
                # judged pairs (WenTian, Home Depot) hold no shoppers: nothing to learn recommendations from
                print(
                    f"{cfg.source}: finetune.train ({train}) holds judged pairs, not shoppers' events: no "
                    "recommendation models built from it (`make retrain` builds them from the event store)"
                )
                return 0
            src = events_of_log(Path(train), products.row_map())
            where = str(train)
            if gone:  # the log keeps users the store forgot: leave them out (their ids hashed as the store does)
                ue = engine.user_events()
                src, left_out = without_forgotten(src, gone, lambda u: ue.user_key(u, for_write=True))
                where += f" without {left_out} events of forgotten users"
        out = models_dir(cfg)
        problem = shrunk(out, len(src[0]))
        verdict = recs_guard.check(engine, src, cfg.recs) if not problem else None
        if verdict is not None and not verdict["passed"]:
            problem = verdict["reason"]
        if problem and not args.force:
            print(f"error: {problem}; the serving models stay (--force to replace them)", file=sys.stderr)
            return 2
        card = build_and_save(
            out,
            products.ids.tolist(),
            *src,
            cfg.recs,
            categories=(products.category_codes, products.categories),
            built_at=built_at,
            guard=verdict,
        )
        card.pop("settings", None)
        print(f"recommendation models from {where} -> {out}")
        print(json.dumps(card, ensure_ascii=False))
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
