"""The index job on Ray Data (`make index RAY=1`, and `make index BACKEND=milvus`): the per-title work spread
over workers, everything else as in the single-process build.

The two per-title steps are what grows with the catalog: **tokenizing** (jieba, one Python call per title)
and **encoding** (the bi-encoder).  Here each runs as a Ray Data ``map_batches`` over the catalog's titles in
blocks, on a pool of actors that each load the tokenizer or the encoder once (one encoder per GPU on a cluster,
CPU actors here).  The results come back in row order and go through the same code as the single-process build:
bm25s over the token lists, FAISS and k-means over the vectors, the same atomic swap of each build folder — so
the indexes are the same (tested on the demo catalog).  The Milvus collection is then written from them in
batches (:mod:`indexer.backends.milvus`).

``ray.init()`` starts a local Ray (``num_cpus`` from the machine or ``--ray-workers``) unless
``RAY_ADDRESS`` names a cluster.  Ray never starts on the query path (it takes seconds and most of a GB).
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np


def start_ray(workers: int | None = None) -> None:
    """Connect to ``RAY_ADDRESS`` when set, else start a local Ray with ``workers`` CPUs (default: all)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    else:
        ray.init(
            num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False
        )
    ray.data.DataContext.get_current().enable_progress_bars = False


class _TokenizeActor:
    def __init__(self, text_cfg, extra_words, field):
        from indexer.text import Tokenizer

        self.tokenizer = Tokenizer(text_cfg, extra_words=extra_words)
        self.field = field

    def __call__(self, batch: dict) -> dict:
        # token lists as one joined string per title (Arrow keeps ragged lists of strings poorly)
        tokens = self.tokenizer.tokenize_many(list(batch["text"]), field=self.field)
        return {"row": batch["row"], "tokens": np.array(["\x1f".join(t) for t in tokens], dtype=object)}


class _EncodeActor:
    def __init__(self, model_path, max_length, batch_size, threads):
        import torch

        from indexer.encoder import Encoder

        torch.set_num_threads(threads)
        self.encoder = Encoder(model_path, max_length=max_length, batch_size=batch_size, device="auto")

    def __call__(self, batch: dict) -> dict:
        return {"row": batch["row"], "vector": self.encoder.encode_passages(list(batch["text"]))}


def _dataset(texts: Sequence[str], block: int):
    import ray

    n = len(texts)
    blocks = max(1, -(-n // block))
    return ray.data.from_items([{"row": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=blocks)


def _collect(ds, n: int, column: str):
    out = [None] * n
    for batch in ds.iter_batches(batch_size=4096, batch_format="numpy"):
        for r, v in zip(batch["row"].tolist(), batch[column]):
            out[r] = v
    return out


class RayTokenizer:
    """A :class:`indexer.text.Tokenizer` whose ``tokenize_many`` runs on Ray actors (the rest delegates)."""

    def __init__(self, tokenizer, text_cfg, extra_words, workers: int, block: int = 2000):
        self._tok, self._cfg, self._words = tokenizer, text_cfg, list(extra_words)
        self.workers, self.block = workers, block
        self.seconds = 0.0

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def tokenize_many(
        self, texts: Sequence[str], progress: bool = False, desc: str = "tokenize", field: str = "words"
    ) -> list[list[str]]:
        import ray

        t0 = time.perf_counter()
        ds = _dataset(texts, self.block).map_batches(
            _TokenizeActor,
            fn_constructor_args=(self._cfg, self._words, field),
            batch_size=500,
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=1,
        )
        joined = _collect(ds, len(texts), "tokens")
        self.seconds += time.perf_counter() - t0
        return [s.split("\x1f") if s else [] for s in joined]


class RayEncoder:
    """An :class:`indexer.encoder.Encoder` whose ``encode_passages`` runs on a pool of encoder actors."""

    def __init__(self, encoder, workers: int, block: int = 1024):
        self._enc, self.workers, self.block = encoder, workers, block
        self.seconds = 0.0

    def __getattr__(self, name):
        return getattr(self._enc, name)

    def encode_passages(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        import ray

        t0 = time.perf_counter()
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        gpus = 1 if self._enc.device.startswith("cuda") else 0
        ds = _dataset(texts, self.block).map_batches(
            _EncodeActor,
            fn_constructor_args=(self._enc.model_path, self._enc.max_length, self._enc.batch_size, threads),
            batch_size=self.block,
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=0 if gpus else 1,
            num_gpus=gpus,
        )
        vecs = _collect(ds, len(texts), "vector")
        self.seconds += time.perf_counter() - t0
        return (
            np.ascontiguousarray(np.stack(vecs), dtype=np.float32)
            if vecs
            else np.zeros((0, self._enc.dim), dtype=np.float32)
        )


class RayRunner:
    """What :func:`indexer.build.build_indexes` takes to run its per-title steps on Ray."""

    def __init__(self, workers: int | None = None):
        start_ray(workers)
        import ray

        self.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))

    def tokenizer(self, tokenizer, text_cfg, extra_words):
        return RayTokenizer(tokenizer, text_cfg, extra_words, self.workers)

    def encoder(self, encoder):
        return RayEncoder(encoder, self.workers)
