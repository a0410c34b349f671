"""Bulk ingestion of a click log into the event store: every row validated (a bad row named by file, line and
field), user ids hashed, each event's rank in its search found (for the taste evidence) and, under
``personal.exposure: examined``, what each search surely showed; then one bulk append."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.formats.clicklog import ClickLogError, iter_clicklog
from engine.events.impressions import searches_in_log
from engine.events.store import EventError


@dataclass
class IngestReport:
    read: int = 0
    recorded: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    users: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.recorded} events recorded for {self.users} users, {len(self.rejected)} rejected "
            f"(of {self.read} rows), {self.seconds:.1f} s"
        )


def ingest_clicklog(ev, path: str | Path, skip_bad_rows: bool = False) -> IngestReport:
    """Load a click log into ``ev`` (:class:`engine.events.users.UserEvents`): validated, user ids hashed,
    profiles built in bulk and merged with stored ones, all in one transaction.  A bad row stops the load (nothing
    stored) unless ``skip_bad_rows``: then it is reported with its reason and the good rows are stored."""
    t0 = time.perf_counter()
    rep = IngestReport()
    hashed: dict[str, str] = {}
    users, pids, rows, evs, ts, queries = [], [], [], [], [], []
    row_of = ev.row_map()
    now = ev.clock()
    for line, item in iter_clicklog(path):
        rep.read += 1
        if isinstance(item, ClickLogError):
            err = str(item)
        else:
            row = row_of.get(item.product_id)
            err = (
                None
                if row is not None
                else f"{path}:{line}: field 'product_id': unknown product {item.product_id!r} (not in the index)"
            )
            if err is None:
                try:
                    ev.check_time(item.timestamp, now)
                except EventError as e:
                    err = f"{path}:{line}: {e}"
        if err is not None:
            if not skip_bad_rows:
                raise EventError(err + " (use --skip-bad-rows to load the good rows and list the bad)")
            rep.rejected.append((line, err))
            continue
        u = hashed.get(item.user_id)
        if u is None:
            u = hashed[item.user_id] = ev.user_key(item.user_id, for_write=True)
        users.append(u)
        pids.append(item.product_id)
        rows.append(row)
        evs.append(item.event)
        ts.append(item.timestamp)
        queries.append(item.query)
    ts_arr = np.asarray(ts, dtype=np.float64)
    mask = ranks = None
    if users:  # each event's rank in its search; impressions below a search's deepest click: unseen
        order = np.argsort(ts_arr, kind="stable")
        kept, in_order = searches_in_log(*([col[i] for i in order] for col in (users, queries, evs, pids, ts)))
        ranks = np.zeros(len(users), dtype=np.int64)
        ranks[order] = in_order
        if ev.settings.exposure == "examined":
            mask = np.zeros(len(users), dtype=bool)
            mask[order] = kept
    rows_arr = np.asarray(rows, dtype=np.int64)
    ev.append_bulk(users, pids, rows_arr, evs, ts_arr, queries, profile_mask=mask, ranks=ranks)
    rep.recorded = len(users)
    rep.users = len(set(users))
    rep.seconds = time.perf_counter() - t0
    return rep
