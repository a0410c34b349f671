"""The ledger of forgotten users: what aggregates built from events before a forget must no longer use.

Forgetting a user (``DELETE /users/{id}``, ``python -m engine.events_cli forget``) deletes their events and
profile at once; models built earlier from events still hold their share: the recommendation models' item
neighbours and ALS item factors, the trending counts and the suggestions' live search counts kept in memory.
The ledger records each forget of a user who had events — their hashed key and the time — in a JSON-lines
file beside the recommendation models (``<recs models>.forgotten.jsonl``, appended one line per forget, so
that replicas sharing the models folder see every forget; read by signature, as the index is).  Then:

- a recommendation build older than the latest forget is **paused**: recommendations fall back to what needs
  no aggregate of other users' events (content, the user's own history, the live store) until a build from
  after the forget serves (:mod:`finetune.recs` leaves every forgotten user's events out of a click-log build;
  the store no longer has them);
- trending and the suggestions' live counts are read again from the store, which no longer has them;
- the final ranker's query clicks (``query_clicks.npz`` of the serving ranker, its ``.previous`` and the
  experiment candidate) lose the user's share at once (:func:`forget_query_clicks`, before their logged
  searches are deleted; :func:`engine.query_clicks.forget_in`).

Only hashed keys are kept (the store's HMAC of the user id), never the id.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def ledger_path(cfg) -> Path:
    """The ledger of a config: beside its recommendation models folder."""
    from engine.recs import models_dir

    d = models_dir(cfg)
    return d.with_name(d.name + ".forgotten.jsonl")


def record(cfg, key: str, t: float) -> None:
    """Append one forget (hashed user key, time) to the ledger."""
    path = ledger_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"user": key, "t": float(t)}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))  # one write of one short line: appends from processes do not mix
    finally:
        os.close(fd)


def read(cfg) -> dict[str, float]:
    """Every forgotten user's key with the time of their last forget (empty without a ledger).  A line a
    crash cut short is skipped."""
    path = ledger_path(cfg)
    out: dict[str, float] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            item = json.loads(line)
            out[str(item["user"])] = max(out.get(str(item["user"]), 0.0), float(item["t"]))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def latest(cfg) -> float:
    """The time of the latest forget (0 without any)."""
    return max(read(cfg).values(), default=0.0)


def signature(cfg) -> tuple | None:
    """What identifies the ledger's state on disk (None: no forget yet)."""
    try:
        st = ledger_path(cfg).stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def query_click_folders(cfg) -> list[Path]:
    """The ranker folders whose query clicks could serve: ``rerank.ranker``, the experiment candidate, and the
    ``.previous`` folder a rollback would bring back."""
    from engine.query_clicks import FILE

    out: list[Path] = []
    for path in (cfg.rerank.ranker, cfg.serve.interleave.candidate):
        if path:
            p = Path(path) if Path(path).is_absolute() else cfg.root / path
            out += [p, p.with_name(p.name + ".previous")]
    return [p for p in dict.fromkeys(out) if (p / FILE).is_file()]


def forget_query_clicks(cfg, store, key: str) -> int:
    """Take the user (hashed ``key``) out of every serving snapshot of query clicks, from their logged searches
    and clicks still in ``store``; returns the number of (query, product) entries changed."""
    from core.formats.clicklog import EVENTS
    from engine.events.impressions import Impression
    from engine.query_clicks import FILE, forget_in

    folders = query_click_folders(cfg)
    if not folders:
        return 0
    imps = [Impression.from_row(r) for r in store.user_impressions(key)]
    if not imps:
        return 0
    click = EVENTS.index("click")
    linked = store.linked_events([i.search_id for i in imps])
    clicks = [(sid, pid, float(ts)) for sid, pid, code, _, ts, user in linked if user == key and int(code) == click]
    return sum(forget_in(folder / FILE, imps, clicks) for folder in folders)
