"""The service's impression log: every answered search is put on a bounded queue and written by one background
thread in batches, off the latency path.

A full queue drops the impression and counts it (``ecomsearch_impressions_total{outcome="dropped"}``) rather than slow a
search; :meth:`ImpressionLog.close` (the app's shutdown) writes what is still queued.  Impressions not yet
written are kept in memory by search id, so a click that arrives a millisecond after its search still finds the
search it answers.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from engine.events.impressions import Impression

log = logging.getLogger("ecomsearch.service")


class ImpressionLog:
    """Writes impressions through ``write(list[Impression])`` (the event store's ``log_impressions``) from a
    background thread; ``capacity`` impressions may wait, ``batch`` go per write."""

    def __init__(self, write: Callable[[list[Impression]], None], capacity: int, batch: int, metrics=None):
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, capacity))
        self._batch = max(1, batch)
        self._pending: dict[str, Impression] = {}  # queued or being written
        self._lock = threading.Lock()
        self._metrics = metrics
        self.logged = self.dropped = self.failed = 0
        self.listeners: list[Callable[[list[Impression]], None]] = []  # told of each batch written (suggestions)
        self._thread = threading.Thread(target=self._run, name="impression-log", daemon=True)
        self._thread.start()

    def submit(self, imp: Impression) -> bool:
        """Queue one impression (never blocks); False when the queue was full and it was dropped."""
        with self._lock:
            self._pending[imp.search_id] = imp
        try:
            self._queue.put_nowait(imp)
        except queue.Full:
            with self._lock:
                self._pending.pop(imp.search_id, None)
            self.dropped += 1
            if self._metrics is not None:
                self._metrics.impressions.labels("dropped").inc()
            return False
        return True

    def pending(self, search_id: str) -> Impression | None:
        """An impression still on its way to the store."""
        with self._lock:
            return self._pending.get(search_id)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            stop = False
            while len(items) < self._batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
            self._flush(items)
            if stop:
                return

    def _flush(self, items: list[Impression]) -> None:
        try:
            self._write(items)
            self.logged += len(items)
            outcome = "logged"
            for listener in self.listeners:
                try:
                    listener(items)
                except Exception:  # a listener's failure never loses an impression
                    log.exception("an impression listener failed")
        except Exception:  # the store is down: counted and logged, the searches were answered anyway
            log.exception("writing %d impressions failed", len(items))
            self.failed += len(items)
            outcome = "failed"
        if self._metrics is not None:
            self._metrics.impressions.labels(outcome).inc(len(items))
        with self._lock:
            for imp in items:
                self._pending.pop(imp.search_id, None)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every impression submitted so far is written (or failed); False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.005)
        return False

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop (a graceful shutdown loses no impression)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
