"""Fine-tuning the bi-encoder: in-batch negatives plus mined hard negatives (MultipleNegativesRankingLoss).

For a batch of B queries, each with one positive title and ``hard_negatives``
mined titles, the loss is the cross-entropy of the query against all B
positives and all hard negatives, scores scaled by ``scale`` (e5 was
pre-trained at temperature 0.01, i.e. scale 100; sentence-transformers'
default is 20).  A batch never holds two queries with the same positive or
the same text, so no in-batch "negative" is a real positive.

Budget options for a 2-core CPU: frozen word embeddings (most of e5-small's
parameters), a max length, a cap on steps and on wall time, a subset of the
training queries.  On a GPU the same recipe runs in bf16/fp16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from finetune import loop
from core.config import BiEncoderTrainConfig
from indexer.encoder import PASSAGE_PREFIX, QUERY_PREFIX


@dataclass
class Example:
    query: str
    positive: str
    negatives: list[str]
    positive_id: str


def batches(examples: Sequence[Example], batch_size: int, rng: np.random.Generator):
    """Batches without duplicate positives or duplicate query texts, in a fresh random order per epoch."""
    while True:
        order = rng.permutation(len(examples))
        batch, seen = [], set()
        for i in order:
            ex = examples[i]
            if ex.positive_id in seen or ex.query in seen:
                continue
            batch.append(ex)
            seen.update((ex.positive_id, ex.query))
            if len(batch) == batch_size:
                yield batch
                batch, seen = [], set()
        if len(batch) >= 2:  # the epoch's remainder (and the only batch of a tiny data set)
            yield batch


def embed(model, texts: list[str]) -> torch.Tensor:
    """Normalized embeddings with gradients (the training forward pass; ``encode`` is for inference)."""
    feats = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in model.tokenize(texts).items()}
    return torch.nn.functional.normalize(model(feats)["sentence_embedding"], dim=-1)


def mnrl_loss(model, batch: Sequence[Example], scale: float, max_negatives: int) -> torch.Tensor:
    queries = [QUERY_PREFIX + ex.query for ex in batch]
    docs = [PASSAGE_PREFIX + ex.positive for ex in batch]
    docs += [PASSAGE_PREFIX + n for ex in batch for n in ex.negatives[:max_negatives]]
    q, d = embed(model, queries), embed(model, docs)
    labels = torch.arange(len(batch), device=model.device)
    rank, size = loop.world()
    if size > 1:
        # data parallel: every process's titles are in-batch negatives for every query, as in one process
        # (the gather is differentiable: each process's embeddings get the gradients of all the losses)
        import torch.distributed as dist
        import torch.distributed.nn.functional as dist_fn

        sizes = [torch.zeros(1, dtype=torch.long) for _ in range(size)]
        dist.all_gather(sizes, torch.tensor([len(d)], dtype=torch.long))
        sizes = [int(x) for x in sizes]
        pad = max(sizes) - len(d)  # all_gather needs equal shapes
        parts = dist_fn.all_gather(torch.nn.functional.pad(d, (0, 0, 0, pad)))
        d = torch.cat([p[:n] for p, n in zip(parts, sizes)])
        labels = labels + sum(sizes[:rank])
    scores = scale * q @ d.T
    return torch.nn.functional.cross_entropy(scores, labels)


def distill_kl_loss(model, batch, scale: float, temperature: float = 1.0) -> torch.Tensor:
    """Listwise KL from the teacher's scores to the student's (``scale`` × cosine) over each query's group of
    candidates: the bi-encoder learns the cross-encoder's order among the titles retrieval hands it."""
    g = len(batch[0][1])  # each item (query, titles, teacher scores[, the judged positive's place: unused here])
    q = embed(model, [QUERY_PREFIX + b[0] for b in batch])
    d = embed(model, [PASSAGE_PREFIX + t for b in batch for t in b[1]]).view(len(batch), g, -1)
    student = scale * torch.einsum("bd,bgd->bg", q, d) / temperature
    teacher = torch.tensor(np.stack([b[2] for b in batch]), dtype=torch.float32, device=model.device) / temperature
    return torch.nn.functional.kl_div(
        torch.log_softmax(student, 1), torch.log_softmax(teacher, 1), log_target=True, reduction="batchmean"
    )


def read_teacher_cache(folder: Path, exclude: set[str] = frozenset()) -> list[tuple[str, list[str], np.ndarray]]:
    """(query, candidate titles, teacher scores) from a `finetune.distill` teacher cache (its chunk files), queries
    in ``exclude`` (dev and evaluation queries) left out."""
    import json

    files = sorted(Path(folder).glob("chunk-*.json"))
    if not files:
        raise FileNotFoundError(f"{folder}: no teacher-score chunks (run `python -m finetune.distill` first)")
    out = []
    for f in files:
        for q, titles, scores in json.loads(f.read_text(encoding="utf-8")):
            if q not in exclude:
                out.append((q, titles, np.asarray(scores, dtype=np.float32)))
    return out


def with_lora(model, cfg: BiEncoderTrainConfig) -> Callable[[Path], None]:
    """Wrap the transformer of ``model`` (a SentenceTransformer) in LoRA adapters (:mod:`finetune.lora`) and
    return the checkpoint writer: the adapters and the merged model, a plain sentence-transformers folder the
    index job and serving load like any other."""
    import copy

    from finetune import lora

    # the adapters are injected into the transformer in place: the SentenceTransformer's forward trains them
    peft_model = lora.adapt(model[0].auto_model, cfg, "FEATURE_EXTRACTION")

    def save(folder: Path) -> None:
        merged_module = lora.save_adapters(peft_model, folder)
        merged = copy.deepcopy(model)
        merged[0].model = merged_module
        merged.save(str(folder))

    return save


def train(
    model,
    examples: Sequence[Example],
    cfg: BiEncoderTrainConfig,
    out: Path,
    evaluate: Callable[[object], float] | None = None,
    log_path: Path | None = None,
    progress: bool = True,
    resume: bool = False,
    extra_log: dict | None = None,
    distill: Sequence | None = None,
    pause_on_time: bool = False,
) -> dict:
    """Train ``model`` (a SentenceTransformer) in place; keep the best checkpoint (by ``evaluate``) in ``out``;
    ``pause_on_time``: a time cap pauses the run, resumable (:func:`finetune.loop.run`).
    With ``cfg.workers`` > 1 the training runs in that many data-parallel processes (Ray Train); the best
    checkpoint on disk is the result (``model`` itself stays as it was)."""
    if cfg.workers > 1 and loop.world()[1] == 1:
        from finetune.distributed import train_on_workers

        return train_on_workers(
            lambda: train(
                model, examples, cfg, out, evaluate, log_path, progress, resume, extra_log, distill, pause_on_time
            ),
            cfg.workers,
            use_gpu=torch.cuda.is_available(),
        )
    torch.manual_seed(cfg.seed)
    model.max_seq_length = cfg.max_length
    if cfg.freeze_word_embeddings:
        model[0].auto_model.get_input_embeddings().weight.requires_grad_(False)
    save = lambda folder: model.save(str(folder))  # noqa: E731
    if cfg.lora_rank > 0:
        save = with_lora(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    make_batches = lambda rng: batches(examples, cfg.batch_size, rng)  # noqa: E731
    loss_fn = lambda batch: mnrl_loss(model, batch, cfg.scale, cfg.hard_negatives)  # noqa: E731
    if distill:
        from finetune.distill import batches as teacher_batches

        def make_batches(rng):  # a judged batch and a distillation batch each step
            return zip(
                batches(examples, cfg.batch_size, rng),
                teacher_batches(distill, cfg.distill_batch, cfg.distill_group, rng),
            )

        def loss_fn(batch):
            judged, taught = batch
            return mnrl_loss(model, judged, cfg.scale, cfg.hard_negatives) + cfg.distill_weight * distill_kl_loss(
                model, taught, cfg.scale, cfg.distill_temperature
            )

    return loop.run(
        model,
        params,
        make_batches,
        loss_fn,
        cfg,
        Path(out),
        save=save,
        evaluate=None if evaluate is None else (lambda: evaluate(model)),
        log_path=log_path,
        resume=resume,
        progress=progress,
        desc="bi-encoder",
        extra_log=extra_log,
        pause_on_time=pause_on_time,
    )


def pool_mrr(
    queries: Sequence[str], pool: Sequence[str], positives: Sequence[set[int]], batch_size: int = 64
) -> Callable[[object], float]:
    """A cheaper dev metric for training: MRR@10 of each query ranking a pool of titles (the dev queries'
    first-stage candidates and positives), so an evaluation encodes thousands of titles, not the catalog."""

    def evaluate(model) -> float:
        q = model.encode(
            [QUERY_PREFIX + t for t in queries], batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        d = model.encode(
            [PASSAGE_PREFIX + t for t in pool], batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        top = np.argsort(-(q @ d.T), axis=1)[:, :10]
        rr = [next((1.0 / (r + 1) for r, j in enumerate(row) if j in pos), 0.0) for row, pos in zip(top, positives)]
        return float(np.mean(rr))

    return evaluate
