"""Rerank: a BERT cross-encoder scores (query, title) pairs; its score is combined with the first-stage score.

The cross-encoder reads ``query: <query>`` and ``passage: <title>`` as one
sequence pair (the e5 prefixes the base model was pre-trained with) and puts
one logit on the [CLS] position: the relevance score, identity activation
(it is trained with a listwise softmax loss, so only differences within one
query's list mean anything).

Pairs are scored in batches sorted by length (short padding), in fp16 on a
GPU; a query's candidates are combined as ``weight * z(cross-encoder) +
(1 - weight) * z(first stage)``, with ``z`` standardizing each score over the
query's candidate list, so the two scales never need calibrating.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from indexer.encoder import PASSAGE_PREFIX, QUERY_PREFIX, ModelMissingError, pick_device

SETTINGS_FILE = "cross_encoder.json"  # the max length it was trained with, the prefixes it reads


def trained_max_length(path: Path, default: int = 96) -> int:
    """The max length a cross-encoder folder was trained with (``cross_encoder.json``)."""
    f = Path(path) / SETTINGS_FILE
    return json.loads(f.read_text())["max_length"] if f.is_file() else default


MEAN_POOLING = "ecomsearch_mean_pooling"  # a config.json flag: the head reads the mean of the token states


def head_logits(model, input_ids, attention_mask, token_type_ids=None):
    """A cross-encoder's logits ``[n, 1]``: BertForSequenceClassification's head on [CLS], or, for a model built
    with mean pooling (``config.ecomsearch_mean_pooling``), the same pooler and classifier on the mean of the
    pair's token states.  A sentence encoder such as e5 is trained on mean pooling, and its [CLS] state barely
    differs between pairs (measured on the base model, 4 layers: standard deviation across pairs 0.004 against a
    norm of 5.5), so a head on [CLS] starts blind and the listwise loss sat at ln 4 for the demo's whole run."""
    if not getattr(model.config, MEAN_POOLING, False):
        return model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
    h = model.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
    m = attention_mask.unsqueeze(-1).to(h.dtype)
    mean = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
    pooler = model.bert.pooler
    return model.classifier(model.dropout(pooler.activation(pooler.dense(mean))))


class CrossEncoder:
    """(query, title) pairs → relevance scores with a fine-tuned ``BertForSequenceClassification``."""

    runtime = "torch"  # what answers: torch, or onnx-<quantize> (engine.onnx_models)

    def __init__(self, model, tokenizer, max_length: int = 96, batch_size: int = 64, path: Path | None = None):
        self.path = path  # the folder it was loaded from (None: built in memory)
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        # one predict at a time: the fast tokenizer is not safe to share between threads ("Already borrowed")
        # and two model calls on the same cores only slow each other down
        self._lock = threading.Lock()

    def __getstate__(self):  # sent to training processes (finetune.distributed): a lock does not travel
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def device(self):
        return next(self.model.parameters()).device

    def fingerprint(self) -> str:
        """Hash of the files this model was loaded from, and its max length (what a ranker trained on its scores
        depends on).  Pinned when first asked (at load): files changed on disk later are not these weights."""
        from indexer.encoder import model_fingerprint

        if self.path is None:
            return ""
        pinned = self.__dict__.setdefault("_fingerprints", {})
        if self.max_length not in pinned:
            pinned[self.max_length] = model_fingerprint(self.path, self.max_length)
        return pinned[self.max_length]

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @classmethod
    def load(
        cls,
        path: str | Path,
        max_length: int | None = None,
        batch_size: int = 64,
        device: str = "auto",
        half_on_gpu: bool = True,
    ) -> "CrossEncoder":
        """A trained cross-encoder from a folder `make finetune` wrote; ``max_length`` defaults to the one
        it was trained with (``cross_encoder.json``)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        p = Path(path)
        if not (p / "config.json").is_file():
            raise ModelMissingError(f"cross-encoder {p} not found; build it with `make finetune`")
        if max_length is None:
            max_length = trained_max_length(p)
        device = pick_device(device)
        model = AutoModelForSequenceClassification.from_pretrained(str(p)).to(device).eval()
        if device.startswith("cuda") and half_on_gpu:
            model.half()
        ce = cls(model, AutoTokenizer.from_pretrained(str(p)), max_length, batch_size, path=p)
        ce.fingerprint()  # pinned to the files just read
        return ce

    @classmethod
    def from_base(
        cls,
        base: str | Path,
        num_layers: int | None = None,
        max_length: int = 96,
        batch_size: int = 64,
        device: str = "auto",
        seed: int = 0,
        pooling: str = "cls",
    ) -> "CrossEncoder":
        """A new cross-encoder initialised from the base model's encoder, keeping its first ``num_layers``
        layers (all when None); the one-logit head starts from seeded random weights and reads [CLS]
        (``pooling="cls"``), or the mean of the pair's token states (``"mean"``, :func:`head_logits`; its
        pooler starts as the identity)."""
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be cls or mean, not {pooling!r}")
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        config = AutoConfig.from_pretrained(str(base))
        if num_layers is not None:
            if not 1 <= num_layers <= config.num_hidden_layers:
                raise ValueError(f"num_layers must be 1..{config.num_hidden_layers}, got {num_layers}")
            config.num_hidden_layers = num_layers
        config.num_labels = 1
        config.architectures = ["BertForSequenceClassification"]
        setattr(config, MEAN_POOLING, pooling == "mean")
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(str(base), config=config)
        if pooling == "mean":
            with torch.no_grad():
                model.bert.pooler.dense.weight.copy_(torch.eye(config.hidden_size))
                model.bert.pooler.dense.bias.zero_()
        return cls(model.to(pick_device(device)), AutoTokenizer.from_pretrained(str(base)), max_length, batch_size)

    def features(self, queries: Sequence[str], titles: Sequence[str]) -> dict:
        feats = self.tokenizer(
            [QUERY_PREFIX + q for q in queries],
            [PASSAGE_PREFIX + t for t in titles],
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in feats.items()}

    def logits(self, queries: Sequence[str], titles: Sequence[str]):
        """Scores as a tensor with gradients (training)."""
        return head_logits(self.model, **self.features(queries, titles))[:, 0]

    def predict(self, queries: Sequence[str], titles: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Scores of the pairs ``(queries[i], titles[i])``, float32, in input order."""
        import torch

        def score(qs, ts):
            return self.logits(qs, ts).float().cpu().numpy()

        with self._lock:
            was_training = self.model.training
            self.model.eval()
            with torch.inference_mode():
                out = score_in_batches(queries, titles, batch_size or self.batch_size, score)
            self.model.train(was_training)
        return out

    def save(self, path: str | Path, card: dict | None = None) -> None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(p))
        self.tokenizer.save_pretrained(str(p))
        (p / SETTINGS_FILE).write_text(
            json.dumps(
                {"max_length": self.max_length, "query_prefix": QUERY_PREFIX, "passage_prefix": PASSAGE_PREFIX},
                indent=1,
            ),
            encoding="utf-8",
        )
        if card is not None:
            (p / "model_card.json").write_text(json.dumps(card, indent=1, ensure_ascii=False), encoding="utf-8")


def score_in_batches(queries: Sequence[str], titles: Sequence[str], batch_size: int, score) -> np.ndarray:
    """``score(queries, titles)`` over batches of pairs sorted by length (short padding), float32 scores back in
    input order: the batching every cross-encoder runtime shares."""
    if len(queries) != len(titles):
        raise ValueError(f"{len(queries)} queries but {len(titles)} titles")
    n = len(queries)
    out = np.zeros(n, dtype=np.float32)
    order = np.argsort([len(q) + len(t) for q, t in zip(queries, titles)], kind="stable")
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        out[idx] = score([queries[j] for j in idx], [titles[j] for j in idx])
    return out


def standardize(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation over one query's candidates (all zeros when constant)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:  # nothing to standardize against (and no numpy warning for an empty list)
        return np.zeros_like(x)
    sd = x.std()
    return np.zeros_like(x) if sd == 0 else (x - x.mean()) / sd


def stage_lookup(rows: np.ndarray, lst) -> tuple[np.ndarray, np.ndarray]:
    """Each of ``rows`` in one stage's ranked list: (its score there, or the list's lowest score, an upper
    bound of its own; its 1-based rank there, or 0 when absent).  Vectorized: one sort, one search."""
    rows = np.asarray(rows)
    srows = np.asarray(lst.rows)
    if len(srows) == 0:
        return np.zeros(len(rows)), np.zeros(len(rows))
    order = np.argsort(srows, kind="stable")
    pos = np.clip(np.searchsorted(srows[order], rows), 0, len(srows) - 1)
    found = srows[order][pos] == rows
    sc = np.asarray(lst.scores, dtype=np.float64)
    return np.where(found, sc[order][pos], float(sc.min())), np.where(found, order[pos] + 1.0, 0.0)


def first_stage_scores(
    fused, lists: Sequence, mode: str = "rrf", looked_up: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """The first-stage score of each fused candidate: ``rrf`` (the reciprocal-rank-fusion score) or
    ``scores`` (the mean over stages of each stage's standardized raw score: BM25 score, dense cosine;
    a candidate outside a stage's list gets that list's lowest score, an upper bound of its own).
    ``looked_up``: each list's :func:`stage_lookup` scores where the caller has them already."""
    if mode == "rrf":
        return np.asarray(fused.scores, dtype=np.float64)
    if mode != "scores":
        raise ValueError(f"unknown first-stage score {mode!r}; use rrf or scores")
    if looked_up is None:
        looked_up = [stage_lookup(fused.rows, lst)[0] for lst in lists]
    total = np.zeros(len(fused.rows))
    for lst, vals in zip(lists, looked_up):
        if len(lst.rows):
            total += standardize(vals)
    return total / max(1, len(lists))


def combine(ce_scores: np.ndarray, first_scores: np.ndarray, weight: float) -> np.ndarray:
    """``weight * z(cross-encoder) + (1 - weight) * z(first stage)`` over one query's candidates."""
    if weight >= 1.0:
        return np.asarray(ce_scores, dtype=np.float64)
    return weight * standardize(ce_scores) + (1.0 - weight) * standardize(first_scores)
