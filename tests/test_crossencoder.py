import numpy as np
import pytest
import torch

from engine.rerank import CrossEncoder, combine, standardize
from finetune import crossencoder as ce_mod
from finetune.crossencoder import Group, group_loss, groups, rerank_mrr, train
from core.formats.catalog import read_catalog
from core.config import CrossEncoderTrainConfig


def demo_groups(demo_dir, n=48):
    cat = read_catalog(demo_dir / "catalog.jsonl")
    out = []
    for i in range(n):
        negs = [cat.titles[(i + j * 37) % len(cat)] for j in range(1, 6)]
        out.append(Group(f"{cat.brands[i]} {cat.categories[i]}", cat.titles[i], negs, 1.0 + i % 3))
    return out


def dev_metric(demo_dir, n=12):
    ex = demo_groups(demo_dir)[:n]
    return rerank_mrr([e.query for e in ex], [[e.positive] + e.negatives for e in ex], [{0} for _ in ex])


def test_first_n_layers_are_kept(tiny_model):
    ce = CrossEncoder.from_base(tiny_model, num_layers=1, device="cpu")
    assert ce.num_layers == 1 and len(ce.model.bert.encoder.layer) == 1
    with pytest.raises(ValueError, match="num_layers"):
        CrossEncoder.from_base(tiny_model, num_layers=5, device="cpu")


def test_a_mean_pooling_head_reads_every_token_survives_save_load_and_onnx_export(tiny_model, tmp_path):
    from engine.onnx_models import OnnxCrossEncoder
    from finetune.export_onnx import export_model

    ce = CrossEncoder.from_base(tiny_model, num_layers=1, device="cpu", pooling="mean")
    assert torch.equal(ce.model.bert.pooler.dense.weight, torch.eye(ce.model.config.hidden_size))
    qs, ts = ["蓝牙耳机"] * 3, ["索尼 蓝牙耳机 黑色", "索尼 蓝牙耳机 白色", "华为 手机"]
    mean, cls = ce.predict(qs, ts), CrossEncoder.from_base(tiny_model, num_layers=1, device="cpu").predict(qs, ts)
    assert not np.allclose(mean, cls)  # another head: the mean of the token states, not [CLS]
    ce.save(tmp_path / "ce")
    again = CrossEncoder.load(tmp_path / "ce", device="cpu")
    np.testing.assert_allclose(again.predict(qs, ts), mean, atol=1e-5)  # the flag lives in config.json
    report = export_model(tmp_path / "ce", "cross-encoder", 64)  # raises when the graph disagrees with torch
    assert report["max_abs_diff_fp32"] < 1e-3
    np.testing.assert_allclose(OnnxCrossEncoder(tmp_path / "ce", 64, quantize="none").predict(qs, ts), mean, atol=1e-4)
    with pytest.raises(ValueError, match="pooling"):
        CrossEncoder.from_base(tiny_model, device="cpu", pooling="max")


def test_groups_put_the_positive_first_and_sample_distinct_negatives(demo_dir):
    ex = demo_groups(demo_dir, 10)
    gen = groups(ex, batch_size=4, group_size=4, rng=np.random.default_rng(0))
    for _ in range(6):
        for query, titles, gain in next(gen):
            src = next(e for e in ex if e.query == query)
            assert titles[0] == src.positive and len(titles) == 4 and len(set(titles[1:])) == 3
            assert set(titles[1:]) <= set(src.negatives) and gain == src.gain
    with pytest.raises(ValueError, match="negatives"):
        next(groups(ex, 4, group_size=7, rng=np.random.default_rng(0)))


@pytest.mark.parametrize("loss", ["listwise", "pointwise"])
def test_a_training_step_lowers_the_loss(tiny_model, demo_dir, loss):
    ce = CrossEncoder.from_base(tiny_model, device="cpu")
    batch = next(groups(demo_groups(demo_dir), 8, 4, np.random.default_rng(0)))
    opt = torch.optim.AdamW(ce.model.parameters(), lr=1e-3)
    ce.model.eval()  # no dropout: compare the same function before and after
    before = group_loss(ce, batch, loss).item()
    for _ in range(5):
        value = group_loss(ce, batch, loss)
        opt.zero_grad()
        value.backward()
        opt.step()
    assert group_loss(ce, batch, loss).item() < before


class FixedLogits:
    """A stand-in cross-encoder whose logits are given (one per pair, in batch order)."""

    def __init__(self, values):
        self.values = torch.tensor(values, dtype=torch.float32)

    def logits(self, queries, titles):
        assert len(queries) == len(titles) == len(self.values)
        return self.values


def test_the_graded_loss_matches_the_softmax_to_the_judged_grades():
    from finetune.crossencoder import graded_loss

    batch = [("q1", ["a", "b", "c"], [2.0, 0.0, 1.0]), ("q2", ["d", "e"], [1.0, 1.0])]
    value = graded_loss(FixedLogits([1.0, 0.0, 0.5, 0.2, -0.3]), batch).item()
    s1 = np.array([1.0, 0.0, 0.5])
    t1 = np.array([3.0, 0.0, 1.0]) / 4.0  # 2^gain - 1, normalized
    s2 = np.array([0.2, -0.3])
    t2 = np.array([0.5, 0.5])
    ce = lambda s, t: -(t * (s - np.log(np.exp(s).sum()))).sum()  # noqa: E731
    assert value == pytest.approx((ce(s1, t1) + ce(s2, t2)) / 2, rel=1e-5)  # the padding of q2 adds nothing
    # the judged order lowers it, the reverse raises it
    best = graded_loss(FixedLogits([3.0, -3.0, 0.0, 0.0, 0.0]), batch).item()
    worst = graded_loss(FixedLogits([-3.0, 3.0, 0.0, 0.0, 0.0]), batch).item()
    assert best < value < worst


def test_graded_groups_skip_queries_of_one_grade_and_learn_the_judged_order(tiny_model, demo_dir, tmp_path):
    from finetune.crossencoder import GradedGroup, graded_groups, judged_ndcg

    cat = read_catalog(demo_dir / "catalog.jsonl")
    # each query: its own product graded 2, one of the same brand 1, two others 0
    ex = []
    for i in range(40):
        same = next(j for j in range(len(cat)) if j != i and cat.brands[j] == cat.brands[i])
        others = [(i + 17 * k) % len(cat) for k in (1, 2)]
        ex.append(
            GradedGroup(
                cat.titles[i], [cat.titles[i], cat.titles[same]] + [cat.titles[o] for o in others], [2.0, 1.0, 0.0, 0.0]
            )
        )
    flat = GradedGroup("x", ["a", "b"], [1.0, 1.0])
    batch = next(graded_groups(ex + [flat], 50, 3, np.random.default_rng(0)))
    assert len(batch) == 40 and all(len(titles) == 3 for _, titles, _ in batch)  # the one-grade query skipped
    with pytest.raises(ValueError, match="different grades"):
        next(graded_groups([flat], 4, 3, np.random.default_rng(0)))
    ce = CrossEncoder.from_base(tiny_model, device="cpu")
    metric = judged_ndcg([e.query for e in ex], [e.titles for e in ex], [e.gains for e in ex])
    before = metric(ce)
    cfg = CrossEncoderTrainConfig(
        loss="graded",
        batch_size=8,
        group_size=4,
        lr=1e-3,
        max_steps=40,
        warmup_steps=2,
        eval_every=40,
        freeze_word_embeddings=False,
        max_length=32,
    )
    train(ce, ex, cfg, tmp_path / "ce", evaluate=metric, progress=False)
    assert metric(CrossEncoder.load(tmp_path / "ce", device="cpu")) > before + 0.05


def test_train_keeps_the_best_checkpoint_and_reloads_with_the_same_scores(tiny_model, demo_dir, tmp_path):
    ce = CrossEncoder.from_base(tiny_model, device="cpu")
    evaluate = dev_metric(demo_dir)
    cfg = CrossEncoderTrainConfig(
        num_layers=None, lr=1e-3, batch_size=8, group_size=4, max_steps=12, eval_every=4, warmup_steps=2, max_length=64
    )
    report = train(
        ce,
        demo_groups(demo_dir),
        cfg,
        tmp_path / "ce",
        evaluate=evaluate,
        log_path=tmp_path / "ce.log.json",
        progress=False,
    )
    assert report["steps"] == 12 and [e["step"] for e in report["log"]] == [0, 4, 8, 12]
    assert report["best_dev"] == max(e["dev"] for e in report["log"])
    assert not (tmp_path / "ce.resume.pt").exists()  # removed once the run finished
    a, b = CrossEncoder.load(tmp_path / "ce", device="cpu"), CrossEncoder.load(tmp_path / "ce", device="cpu")
    assert abs(evaluate(a) - report["best_dev"]) <= 5e-5  # the log rounds to 4 decimals
    q, t = ["华为 手机", "猫粮"], ["华为 Mate60 手机", "皇家 猫粮 2kg"]
    np.testing.assert_array_equal(a.predict(q, t), b.predict(q, t))
    # scores do not depend on the batch a pair is scored in
    np.testing.assert_allclose(a.predict(q, t, batch_size=1), a.predict(q, t), atol=1e-5)


def test_lora_trains_only_adapters_and_saves_them_beside_a_merged_model_that_scores_the_same(
    tiny_model, demo_dir, tmp_path
):
    ce = CrossEncoder.from_base(tiny_model, device="cpu")
    total = sum(p.numel() for p in ce.model.parameters())
    before = {k: v.clone() for k, v in ce.model.state_dict().items()}
    cfg = CrossEncoderTrainConfig(
        num_layers=None,
        lr=1e-2,
        batch_size=8,
        group_size=4,
        max_steps=6,
        eval_every=6,
        warmup_steps=1,
        max_length=64,
        lora_rank=4,
        lora_dropout=0.0,
    )
    # no dev evaluation: the last step is what is saved (with one, a step that loses on dev is not), so the merged
    # model on disk and the adapters in memory are the same weights
    report = train(ce, demo_groups(demo_dir), cfg, tmp_path / "ce", evaluate=None, progress=False)
    assert report["steps"] == 6
    trainable = sum(p.numel() for p in ce.model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.2 * total  # adapters and the head, not the encoder
    base_weights = {
        k.replace("base_model.model.", ""): v
        for k, v in ce.model.state_dict().items()
        if "lora_" not in k and "modules_to_save" not in k and "original_module" not in k
    }
    frozen = [
        k
        for k in before
        if "classifier" not in k
        and k.replace(".weight", ".base_layer.weight") not in base_weights
        and k in base_weights
    ]
    assert all(torch.equal(before[k], base_weights[k]) for k in frozen) and frozen  # the encoder did not move
    adapter = list((tmp_path / "ce" / "lora").glob("adapter_model.*"))
    assert adapter and adapter[0].stat().st_size < 0.5 * sum(f.stat().st_size for f in (tmp_path / "ce").glob("model*"))
    merged = CrossEncoder.load(tmp_path / "ce", device="cpu")
    ce.model.eval()
    q, t = ["华为 手机", "猫粮"], ["华为 Mate60 手机", "皇家 猫粮 2kg"]
    np.testing.assert_allclose(merged.predict(q, t), ce.predict(q, t), atol=1e-4)  # merging changes nothing


def test_an_interrupted_run_resumes_to_the_same_weights(tiny_model, demo_dir, tmp_path, monkeypatch):
    cfg = CrossEncoderTrainConfig(
        num_layers=None, lr=1e-3, batch_size=8, group_size=4, max_steps=8, eval_every=4, warmup_steps=2, max_length=64
    )
    ex = demo_groups(demo_dir)
    full = CrossEncoder.from_base(tiny_model, device="cpu")
    train(full, ex, cfg, tmp_path / "full", progress=False)

    calls = {"n": 0}
    real = ce_mod.group_loss

    def crashing(model, batch, loss="listwise"):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(model, batch, loss)

    monkeypatch.setattr(ce_mod, "group_loss", crashing)
    first = CrossEncoder.from_base(tiny_model, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train(first, ex, cfg, tmp_path / "resumed", progress=False)
    assert (tmp_path / "resumed.resume.pt").is_file()
    monkeypatch.setattr(ce_mod, "group_loss", real)
    again = CrossEncoder.from_base(tiny_model, device="cpu", seed=123)  # other init: the state file must win
    report = train(again, ex, cfg, tmp_path / "resumed", progress=False, resume=True)
    assert report["steps"] == 8
    for (name, p), (_, r) in zip(full.model.named_parameters(), again.model.named_parameters()):
        torch.testing.assert_close(p, r, msg=name)


def test_a_time_cap_pauses_the_run_and_resume_trains_on_to_the_uncapped_weights(tiny_model, demo_dir, tmp_path):
    import dataclasses

    cfg = CrossEncoderTrainConfig(
        num_layers=None, lr=1e-3, batch_size=8, group_size=4, max_steps=8, eval_every=4, warmup_steps=2, max_length=64
    )
    ex = demo_groups(demo_dir)
    full = CrossEncoder.from_base(tiny_model, device="cpu")
    train(full, ex, cfg, tmp_path / "full", progress=False)

    capped = dataclasses.replace(cfg, max_minutes=1e-9)  # a machine far too slow for its cap: one step, then out
    first = CrossEncoder.from_base(tiny_model, device="cpu")
    report = train(first, ex, capped, tmp_path / "slow", progress=False, pause_on_time=True)
    assert (report["steps"], report["max_steps"], report["stopped_by"], report["paused"]) == (1, 8, "max_minutes", True)
    assert (tmp_path / "slow.resume.pt").is_file()  # kept: the run goes on from here
    again = CrossEncoder.from_base(tiny_model, device="cpu", seed=123)
    report = train(again, ex, cfg, tmp_path / "slow", progress=False, resume=True, pause_on_time=True)
    assert (report["steps"], report["stopped_by"], report["paused"]) == (8, "max_steps", False)
    assert not (tmp_path / "slow.resume.pt").exists()
    for (name, p), (_, r) in zip(full.model.named_parameters(), again.model.named_parameters()):
        torch.testing.assert_close(p, r, msg=name)  # the schedule was the whole run's, not a cut-short one

    # without pause_on_time (a budgeted retrain) the cap ends the run for good
    report = train(CrossEncoder.from_base(tiny_model, device="cpu"), ex, capped, tmp_path / "budget", progress=False)
    assert (report["steps"], report["stopped_by"], report["paused"]) == (1, "max_minutes", False)
    assert not (tmp_path / "budget.resume.pt").exists()


def test_combine_standardizes_each_score():
    ce = np.array([10.0, 0.0, 5.0])
    first = np.array([0.01, 0.02, 0.03])
    np.testing.assert_allclose(standardize(ce).mean(), 0, atol=1e-12)
    np.testing.assert_allclose(standardize(ce).std(), 1)
    assert np.argmax(combine(ce, first, 1.0)) == 0
    assert np.argmax(combine(ce, first, 0.0)) == 2
    mixed = combine(ce, first, 0.5)  # z: ce (1.22, -1.22, 0), first (-1.22, 0, 1.22)
    assert mixed[2] > mixed[0] > mixed[1] and np.isfinite(combine(np.ones(3), first, 0.5)).all()


def test_first_stage_scores_fill_missing_stage_scores_with_the_lists_lowest():
    from engine.fusion import reciprocal_rank_fusion
    from engine.rerank import first_stage_scores
    from core.types import SearchResult

    bm = SearchResult(np.array([5, 3, 9]), np.array([12.0, 8.0, 2.0], dtype=np.float32))
    de = SearchResult(np.array([3, 7]), np.array([0.9, 0.8], dtype=np.float32))
    fused = reciprocal_rank_fusion([bm, de], 10)
    np.testing.assert_array_equal(first_stage_scores(fused, [bm, de], "rrf"), fused.scores.astype(np.float64))
    s = dict(zip(fused.rows.tolist(), first_stage_scores(fused, [bm, de], "scores")))
    # row 3 is second in bm25 and first in dense: it beats row 5 (first in bm25, missing from dense)
    assert s[3] > s[5] > s[9] and s[7] < s[3]
    bm_filled = np.array([12.0, 8.0, 2.0, 2.0])  # rows 5, 3, 9, 7 (7 missing: the list's lowest)
    de_filled = np.array([0.8, 0.9, 0.8, 0.8])
    expect = (standardize(bm_filled) + standardize(de_filled)) / 2
    np.testing.assert_allclose([s[5], s[3], s[9], s[7]], expect)
    with pytest.raises(ValueError, match="rrf or scores"):
        first_stage_scores(fused, [bm, de], "max")
