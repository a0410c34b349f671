"""The query encoder and the cross-encoder on ONNX Runtime (CPU), from the graphs `finetune.export_onnx` wrote.

Same interface as their torch counterparts (``encode_queries``; ``predict`` and ``fingerprint``), so the engine
swaps them by config (``dense.query_runtime`` / ``rerank.runtime``, ``quantize: int8``).  Tokenization is the
model's own fast tokenizer; a lock keeps it to one thread at a time (a Rust tokenizer shared by threads fails
with "Already borrowed").  An export made from other weights than the model folder's is refused.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from indexer.encoder import PASSAGE_PREFIX, QUERY_PREFIX, ModelMissingError, model_fingerprint
from indexer.onnx_files import onnx_file, read_export


class _OnnxModel:
    """An exported model's ONNX Runtime session and tokenizer: the part both encoders share."""

    kind = ""  # the export kind this class runs (export.json)

    def __init__(self, path: Path, max_length: int, quantize: str = "none", threads: int = 0):
        import onnxruntime as ort
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.path = Path(path)
        self.max_length = max_length
        self.quantize = quantize
        export = read_export(self.path)
        f = onnx_file(self.path, quantize)
        if export is None or not f.is_file():
            raise ModelMissingError(
                f"no ONNX export of {self.path} ({f} missing); run `python -m finetune.export_onnx --config <config>`"
            )
        if export.get("kind") != self.kind:
            raise ModelMissingError(f"{f} is a {export.get('kind')} export, not a {self.kind}")
        if export.get("source_fingerprint") != model_fingerprint(self.path, 0):
            raise ModelMissingError(
                f"{f} was exported from other weights than {self.path} now holds; re-run "
                "`python -m finetune.export_onnx --config <config>`"
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or (os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        # no spinning between runs: the query encoder's and the cross-encoder's thread pools would spin against
        # each other on the same cores (measured on the demo: p50 107 -> 59 ms per query on 2 cores)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
        self.inputs = export["inputs"]
        hf_logging.set_verbosity_error()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self._tok_lock = threading.Lock()

    @property
    def runtime(self) -> str:
        return f"onnx-{self.quantize}"

    def _run(self, *texts, truncation) -> tuple[np.ndarray, dict]:
        """The graph's output for tokenized ``texts`` (one list, or two for pairs), and the features."""
        with self._tok_lock:
            feats = self.tokenizer(
                *texts, padding=True, truncation=truncation, max_length=self.max_length, return_tensors="np"
            )
        return self.session.run(None, {k: feats[k].astype(np.int64) for k in self.inputs})[0], feats


class OnnxCrossEncoder(_OnnxModel):
    """(query, title) pairs → relevance scores, as :class:`engine.rerank.CrossEncoder`, on ONNX Runtime."""

    kind = "cross-encoder"

    def __init__(self, path: Path, max_length: int, batch_size: int = 128, quantize: str = "none", threads: int = 0):
        super().__init__(path, max_length, quantize, threads)
        self.batch_size = batch_size
        self._fingerprint = model_fingerprint(self.path, self.max_length)  # the weights exported (checked above)

    def fingerprint(self) -> str:
        return self._fingerprint

    def predict(self, queries: Sequence[str], titles: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        from engine.rerank import score_in_batches

        def score(qs, ts):
            logits, _ = self._run(
                [QUERY_PREFIX + q for q in qs], [PASSAGE_PREFIX + t for t in ts], truncation="longest_first"
            )
            return logits[:, 0]

        return score_in_batches(queries, titles, batch_size or self.batch_size, score)


class OnnxQueryEncoder(_OnnxModel):
    """Queries → L2-normalized mean-pooled vectors (the e5 recipe), as :class:`indexer.encoder.Encoder`
    does for queries, on ONNX Runtime.  Products stay encoded by torch at build time; the vectors agree
    (tested) so one index serves both."""

    kind = "query-encoder"

    def __init__(self, path: Path, max_length: int, fingerprint: str, quantize: str = "none", threads: int = 0):
        super().__init__(path, max_length, quantize, threads)
        self.fingerprint = fingerprint  # the torch encoder's: the index was built with it
        self.dim = int(json.loads((self.path / "config.json").read_text())["hidden_size"])  # mean pooling keeps it

    def encode_queries(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        hidden, feats = self._run([QUERY_PREFIX + t for t in texts], truncation=True)
        mask = feats["attention_mask"][..., None].astype(np.float32)
        vecs = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def describe(self) -> dict:
        return {
            "model": str(self.path),
            "runtime": self.runtime,
            "max_length": self.max_length,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
        }
