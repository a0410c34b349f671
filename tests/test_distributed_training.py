"""Data-parallel fine-tuning (2 CPU workers, gloo, started by Ray Train) follows the one-process loss curve."""

import dataclasses
import json
import os

import numpy as np
import pytest

if not os.environ.get("CI"):
    pytest.importorskip("ray", reason="pip install -e '.[scale]'")

from core.config import BiEncoderTrainConfig, CrossEncoderTrainConfig  # noqa: E402


def _titles(demo_dir, n=200):
    rows = [json.loads(line) for line in (demo_dir / "catalog.jsonl").read_text(encoding="utf-8").splitlines()[:n]]
    return [r["title"] for r in rows], [r["id"] for r in rows]


def no_dropout(module):
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(str(next(folder.rglob("model.safetensors"))))


def _losses(report):
    return np.array([e["loss"] for e in report["log"] if e["loss"] is not None])


@pytest.fixture(scope="module")
def ray_session():
    import ray

    yield
    ray.shutdown()


def test_two_workers_train_the_cross_encoder_along_the_one_worker_curve(demo_dir, tiny_model, tmp_path, ray_session):
    from engine.rerank import CrossEncoder
    from finetune.crossencoder import Group, train

    titles, _ = _titles(demo_dir)
    rng = np.random.default_rng(0)
    groups = [Group(t[:4], t, [titles[j] for j in rng.choice(len(titles), 4, replace=False)], 1.0) for t in titles]
    cfg = CrossEncoderTrainConfig(
        num_layers=1, lr=1e-3, batch_size=8, group_size=3, max_steps=10, eval_every=2, warmup_steps=1, max_length=32
    )
    reports = {}
    CrossEncoder.from_base(tiny_model, 1, max_length=32, device="cpu", seed=0).save(tmp_path / "ce0")
    for w in (1, 2):
        model = CrossEncoder.from_base(tiny_model, 1, max_length=32, device="cpu", seed=0)
        no_dropout(model.model)  # dropout masks differ by shard; the math must not
        reports[w] = train(model, groups, dataclasses.replace(cfg, workers=w), tmp_path / f"ce{w}", progress=False)
    assert reports[2]["log"][-1].get("workers") == 2 and reports[2]["steps"] == 10
    a, b = _losses(reports[1]), _losses(reports[2])
    assert len(a) == len(b) == 5
    np.testing.assert_allclose(a, b, rtol=1e-3)  # (the tiny model barely leaves ln 3 in 10 steps)
    # the same updates: the model rank 0 saved has the one-process model's weights
    w0, w1, w2 = _weights(tmp_path / "ce0"), _weights(tmp_path / "ce1"), _weights(tmp_path / "ce2")
    assert w1.keys() == w2.keys()
    moved = np.sqrt(sum(float(((w1[k] - w0[k]) ** 2).sum()) for k in w1))
    apart = np.sqrt(sum(float(((w1[k] - w2[k]) ** 2).sum()) for k in w1))
    assert moved > 0.01 and apart < 0.02 * moved


def test_two_workers_train_the_bi_encoder_with_every_in_batch_negative(demo_dir, tiny_model, tmp_path, ray_session):
    from sentence_transformers import SentenceTransformer

    from finetune.biencoder import Example, train

    titles, ids = _titles(demo_dir)
    examples = [Example(t[:4], t, [titles[(i + 7) % len(titles)]], pid) for i, (t, pid) in enumerate(zip(titles, ids))]
    cfg = BiEncoderTrainConfig(
        lr=1e-3,
        batch_size=16,
        scale=20,
        max_steps=10,
        eval_every=2,
        warmup_steps=1,
        max_length=32,
        freeze_word_embeddings=False,
    )
    reports = {}
    for w in (1, 2):
        model = SentenceTransformer(str(tiny_model), device="cpu")
        no_dropout(model)
        reports[w] = train(model, examples, dataclasses.replace(cfg, workers=w), tmp_path / f"be{w}", progress=False)
    a, b = _losses(reports[1]), _losses(reports[2])
    assert len(a) == len(b) == 5 and a[-1] < a[0] - 0.1
    np.testing.assert_allclose(a, b, rtol=1e-3)
    w1, w2 = _weights(tmp_path / "be1"), _weights(tmp_path / "be2")
    # (the pooler is not part of the mean-pooled model: randomly set at each load, never trained)
    assert max(float(np.abs(w1[k] - w2[k]).max()) for k in w1 if not k.startswith("pooler")) < 1e-4
