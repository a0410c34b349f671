"""`make retrain`'s optional cross-encoder step (``finetune.retrain.crossencoder_minutes`` > 0): the serving
cross-encoder trained further on the logged searches' debiased click pairs, within a time budget.

- **Pairs.**  Each engaged training search gives one group per engaged product: its title against the titles
  the same search showed that the shopper did not engage with (skipped above it, or shown below), the
  group's loss weighed by the gain (click 1, cart 2, purchase 3) times the clipped inverse examination
  propensity of its rank (:mod:`finetune.click_model`): a click at rank 8, where few look, says more than one
  at rank 1.  A user's searches keep their per-user cap (``max_user_searches``).
- **Training** starts from the serving model's weights with the config's ``finetune.crossencoder`` recipe
  (listwise loss), for at most ``crossencoder_minutes``, and keeps the checkpoint with the best MRR@10 of the
  engaged products among what the held-out searches showed (step 0 included: no checkpoint better than the
  serving model, no new model).
- **Output** ``<cross-encoder>.staging`` (and its ONNX export beside it when the config serves on ONNX).  The
  retrain then fits the ranker over the new model's scores and guards the pair (new cross-encoder and ranker)
  against the serving pair; a win promotes both.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np


def click_groups(engine, sessions, propensity, clip: float) -> list:
    """:class:`finetune.crossencoder.Group` per engaged product of each session (module docstring)."""
    from finetune.crossencoder import Group

    titles = engine.products.titles
    theta = np.asarray(propensity, dtype=np.float64)
    out = []
    for s in sessions:
        shown = [r for r in s.shown if r >= 0]
        negatives = [titles[r] for r in shown if r not in s.gains]
        for j, r in enumerate(s.shown):
            g = s.gains.get(r, 0.0) if r >= 0 else 0.0
            if g <= 0:
                continue
            k = min(s.offset + j, len(theta) - 1)
            ips = min(1.0 / max(float(theta[k]), 1e-12), clip)
            out.append(Group(s.query, titles[r], negatives, float(g) * ips * s.weight))
    return out


def holdout_metric(engine, sessions):
    """MRR@10 of the engaged products among what each held-out search showed, the cross-encoder alone."""
    from finetune.crossencoder import rerank_mrr

    titles = engine.products.titles
    queries, lists, positives = [], [], []
    for s in sessions:
        shown = [r for r in s.shown if r >= 0]
        pos = {i for i, r in enumerate(shown) if s.gains.get(r, 0.0) > 0}
        if pos and len(shown) > 1:
            queries.append(s.query)
            lists.append([titles[r] for r in shown])
            positives.append(pos)
    return rerank_mrr(queries, lists, positives), len(queries)


def finetune_on_clicks(cfg, engine, logged, propensity, progress: bool = True) -> tuple[dict, Path | None]:
    """Train the serving cross-encoder further on ``logged`` (:class:`finetune.retrain_data.LoggedSessions`);
    returns (its card, the staging folder) — the folder is None when no checkpoint beat the serving model."""
    from engine.rerank import CrossEncoder
    from finetune.crossencoder import train, usable_groups
    from finetune.promote import staging_folder
    from indexer.encoder import resolve_model

    rc, t = cfg.finetune.retrain, cfg.finetune.crossencoder
    t = dataclasses.replace(
        t,
        loss="listwise",
        max_minutes=rc.crossencoder_minutes,
        max_steps=max(t.max_steps, 10_000),
        eval_every=max(1, min(t.eval_every, 50)),
    )
    t0 = time.perf_counter()
    serving = Path(resolve_model(cfg.rerank.model, cfg.root))
    examples = click_groups(engine, logged.train, propensity, rc.clip)
    usable = usable_groups(examples, t.group_size)
    evaluate, n_eval = holdout_metric(engine, logged.holdout)
    card: dict = {
        "from": str(serving),
        "groups": len(examples),
        "usable_groups": len(usable),
        "holdout_searches": n_eval,
        "budget_minutes": rc.crossencoder_minutes,
        "pairs": "engaged product vs the products its search showed and the shopper passed over; "
        "weight = gain x clipped inverse examination propensity of its rank",
    }
    if not usable or not n_eval:
        card["skipped"] = "too few engaged searches with enough shown products to train or to check on"
        return card, None
    model = CrossEncoder.load(serving, max_length=t.max_length, device=cfg.rerank.device)
    before = round(float(evaluate(model)), 4)
    staged = staging_folder(serving)  # the loop saves its best checkpoint here (the first: the serving weights)
    report = train(model, usable, t, staged, evaluate=evaluate, progress=progress)
    best = report.get("best_dev")
    card.update(holdout_mrr_serving=before, holdout_mrr_new=best, training={k: report[k] for k in report if k != "log"})
    card["minutes"] = round((time.perf_counter() - t0) / 60, 2)
    if best is None or best <= before:
        shutil.rmtree(staged, ignore_errors=True)
        card["kept"] = "the serving cross-encoder: no checkpoint beat it on the held-out searches"
        return card, None
    (staged / "retrain_card.json").write_text(json.dumps(card, indent=1, default=str), encoding="utf-8")
    if cfg.rerank.runtime == "onnx":
        from finetune.export_onnx import export_model

        card["onnx"] = export_model(staged, "cross-encoder", cfg.rerank.max_length or t.max_length)
    return card, staged


def promote_cross_encoder(staged: Path, cfg) -> Path | None:
    """Swap a retrained cross-encoder (and its ONNX export, when there is one) in; returns the previous folder."""
    from finetune.promote import promote
    from indexer.encoder import resolve_model
    from indexer.onnx_files import onnx_dir

    serving = Path(resolve_model(cfg.rerank.model, cfg.root))
    if onnx_dir(staged).is_dir():
        promote(onnx_dir(staged), onnx_dir(serving))
    return promote(staged, serving)


def rollback_models(cfg) -> list[str]:
    """``--rollback``: the previous ranker back in service, and the previous cross-encoder with it when the ranker
    being rolled back came with a retrained one (its card says so)."""
    from engine.ranker import Ranker
    from finetune.promote import rollback
    from indexer.encoder import resolve_model
    from indexer.onnx_files import onnx_dir

    ranker_dir = Path(cfg.rerank.ranker)
    done = []
    card = Ranker.load(ranker_dir).card if Ranker.file_signature(ranker_dir) else {}
    if card.get("cross_encoder_retrained"):
        ce = Path(resolve_model(cfg.rerank.model, cfg.root))
        if onnx_dir(ce).with_name(onnx_dir(ce).name + ".previous").is_dir():
            rollback(onnx_dir(ce))
        rollback(ce)
        done.append(str(ce))
    rollback(ranker_dir)
    return [str(ranker_dir), *done]
