"""Dynamic micro-batching of cross-encoder work across concurrent queries.

Each query hands its (query, title) pairs to :meth:`MicroBatcher.predict` and waits; one worker thread takes
the first waiting request, gathers whatever else arrives within ``window_ms`` (up to ``max_pairs`` pairs), scores
them all in one model call and hands each request its slice.  N concurrent queries thus cost one forward pass
of N lists instead of N small ones (and never two model calls competing for the same cores).  With no
concurrency a request waits at most the window.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Sequence

import numpy as np


class MicroBatcher:
    def __init__(self, model, window_ms: float = 3.0, max_pairs: int = 1024):
        self.model = model
        self.window = window_ms / 1000.0
        self.max_pairs = max_pairs
        self._queue: queue.Queue = queue.Queue()
        self.batches = 0  # model calls made
        self.requests = 0  # requests served
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="cross-encoder-batcher", daemon=True)
        self._thread.start()

    def predict(self, queries: Sequence[str], titles: Sequence[str]) -> np.ndarray:
        if len(queries) == 0:
            return np.zeros(0, dtype=np.float32)
        fut: Future = Future()
        self._queue.put((list(queries), list(titles), fut))
        return fut.result()

    def close(self) -> None:
        self._stop = True
        self._queue.put(None)

    def _run(self) -> None:
        while not self._stop:
            first = self._queue.get()
            if first is None:
                return
            batch, n = [first], len(first[0])
            deadline = time.perf_counter() + self.window
            while n < self.max_pairs:
                left = deadline - time.perf_counter()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._stop = True
                    break
                batch.append(item)
                n += len(item[0])
            qs = [q for b in batch for q in b[0]]
            ts = [t for b in batch for t in b[1]]
            try:
                scores = self.model.predict(qs, ts)
            except BaseException as e:  # every waiting request gets the error, the worker goes on
                for b in batch:
                    b[2].set_exception(e)
                continue
            self.batches += 1
            self.requests += len(batch)
            start = 0
            for q, _, fut in batch:
                fut.set_result(scores[start : start + len(q)])
                start += len(q)
