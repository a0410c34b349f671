"""The bi-encoder wrapper shared by the indexer, the engine and training.

One place decides how text becomes a vector: the e5 prefixes (``query: ``,
``passage: ``), a configurable max length, batches sorted by length (so
padding stays short), L2-normalized float32 output, fp16 on a GPU, and a
progress bar on long runs.  It imports nothing from ``engine`` or
``finetune``, so every package can use it without import cycles.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.types import EcomsearchError

HUB_ID = "intfloat/multilingual-e5-small"
QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "


class ModelMissingError(EcomsearchError, FileNotFoundError):
    """A configured model is not on disk and cannot be fetched; the message names the command that builds it."""


def resolve_model(name: str | Path, root: Path | None = None) -> Path | str:
    """A local folder is used as is; a hub id is loaded from the hub where one is reachable;
    the default base model falls back to ``models/base`` built by ``make model``."""
    p = Path(name)
    if not p.is_absolute() and root is not None:
        p = root / p
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelMissingError(f"{p} is not a model folder (no config.json)")
        return p
    if str(name) == HUB_ID and root is not None and (root / "models" / "base" / "config.json").is_file():
        return root / "models" / "base"
    parts = str(name).split("/")
    if len(parts) == 2 and parts[0] not in ("", ".", "..", "models") and not os.environ.get("HF_HUB_OFFLINE"):
        return str(name)  # owner/name: a hub id, fetched by from_pretrained where a hub is reachable
    hint = "`make model`" if str(name) in (HUB_ID, "models/base") or p.name == "base" else "`make finetune`"
    raise ModelMissingError(f"model {name!r} not found at {p}; build it with {hint}")


def model_fingerprint(path: Path | str, max_length: int) -> str:
    """Hash of the model's files (weights, config, tokenizer) and the max length: what makes two vectors comparable."""
    p = Path(path)
    h = hashlib.sha256(f"max_length={max_length}".encode())
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if (
                f.is_file()
                and f.suffix in (".json", ".safetensors", ".bin", ".txt", ".model")
                and f.name != "README.md"
            ):
                h.update(f.relative_to(p).as_posix().encode())
                h.update(_file_digest(f).encode())
    else:
        h.update(str(path).encode())
    return h.hexdigest()[:16]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(f: Path) -> str:
    st = f.stat()
    key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        d = hashlib.sha256()
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                d.update(block)
        _DIGESTS[key] = d.hexdigest()
    return _DIGESTS[key]


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Encoder:
    """Texts → normalized float32 vectors with a sentence-transformers model."""

    model_path: Path | str
    max_length: int = 64
    batch_size: int = 64
    device: str = "auto"

    def __post_init__(self):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.device = pick_device(self.device)
        try:
            self.model = SentenceTransformer(str(self.model_path), device=self.device)
        except OSError as e:
            if Path(str(self.model_path)).exists():
                raise
            raise ModelMissingError(
                f"could not load {self.model_path!r} from a model hub ({e.__class__.__name__}); "
                "point the config at a local folder, or build the base model with `make model`"
            ) from None
        self.model.max_seq_length = self.max_length
        if self.device.startswith("cuda"):
            self.model.half()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.fingerprint = model_fingerprint(self.model_path, self.max_length)
        self._lock = threading.Lock()  # the fast tokenizer is not safe to share between threads

    def _encode(self, texts: Sequence[str], prefix: str, progress: bool) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        # sentence-transformers sorts each call's texts by length before batching
        with self._lock:
            vecs = self.model.encode(
                [prefix + t for t in texts],
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=progress,
            )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_queries(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        return self._encode(texts, QUERY_PREFIX, progress)

    def encode_passages(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        return self._encode(texts, PASSAGE_PREFIX, progress)

    def describe(self) -> dict:
        return {
            "model": str(self.model_path),
            "max_length": self.max_length,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
        }
