"""Evaluation a team can trust: bootstrap intervals with known answers, paired gains and p-values, the
queries a change hurt most, the report's sections and per-query TSV, and `python -m eval --compare`."""

import json

import numpy as np
import pytest

from core.bootstrap import bootstrap_ci, paired_bootstrap
from eval.evaluate import StageResult
from eval.report import write_report
from eval.significance import intervals, most_hurt, paired


def test_a_constant_has_a_zero_width_interval_and_a_constant_gain_is_certain():
    m, lo, hi = bootstrap_ci(np.full(50, 0.4))
    assert (m, lo, hi) == (pytest.approx(0.4), pytest.approx(0.4), pytest.approx(0.4))
    assert intervals({"mrr@10": np.full(5, 0.4)})["mrr@10"] == {
        "mean": pytest.approx(0.4),
        "ci_low": pytest.approx(0.4),
        "ci_high": pytest.approx(0.4),
    }
    a = np.linspace(0, 1, 80)
    r = paired_bootstrap(a, a + 0.05)
    assert r["diff"] == pytest.approx(0.05) and r["ci_low"] == pytest.approx(0.05) and r["p_value"] == 0.0
    assert paired_bootstrap(a, a)["p_value"] == 1.0


def test_the_interval_has_the_normal_width_and_95_percent_coverage():
    rng = np.random.default_rng(0)
    x = rng.random(400) < 0.3  # Bernoulli(0.3): sd of the mean sqrt(0.21 / 400)
    m, lo, hi = bootstrap_ci(x.astype(float))
    assert (hi - lo) == pytest.approx(2 * 1.96 * np.sqrt(m * (1 - m) / 400), rel=0.12)
    covered = 0
    for seed in range(200):  # the interval covers the true mean 0.3 about 95% of the time
        s = (np.random.default_rng(100 + seed).random(60) < 0.3).astype(float)
        _, lo, hi = bootstrap_ci(s, n_resamples=1000, seed=seed)
        covered += lo <= 0.3 <= hi
    assert 0.89 <= covered / 200 <= 0.99


def test_paired_differences_cancel_what_both_find_hard():
    rng = np.random.default_rng(1)
    hard = rng.random(300)  # per-query difficulty shared by both systems
    a, b = hard, hard + rng.normal(0.02, 0.05, 300)
    g = paired({"mrr@10": a}, {"mrr@10": b})["mrr@10"]
    assert g["ci_low"] > 0 and g["p_value"] < 0.01  # a small but consistent gain is significant paired...
    _, lo1, hi1 = bootstrap_ci(a)
    _, lo2, hi2 = bootstrap_ci(b)
    assert lo2 < hi1  # ...though the two unpaired intervals overlap
    noise = paired({"m": a}, {"m": a + rng.normal(0, 0.05, 300) - 0.0})["m"]
    assert noise["ci_low"] < 0 < noise["ci_high"] or noise["p_value"] > 0.01


def test_most_hurt_lists_only_queries_that_fell_worst_first():
    a = np.array([1.0, 0.5, 0.2, 1.0, 0.0])
    b = np.array([0.1, 0.5, 0.3, 0.5, 0.0])
    assert most_hurt(a, b, ["q0", "q1", "q2", "q3", "q4"], n=5) == [("q0", 1.0, 0.1), ("q3", 1.0, 0.5)]


def _stage(name, mrr, run):
    pq = {"mrr@10": np.asarray(mrr, float), "ndcg@10": np.asarray(mrr, float), "recall@100": np.ones(len(mrr))}
    m = {k: float(v.mean()) for k, v in pq.items()} | {"n_queries": len(mrr)}
    return StageResult(name, m, run, np.array([1.0, 2.0]), [], pq)


def test_the_report_shows_intervals_gains_the_most_hurt_queries_and_writes_per_query_results(tmp_path):
    qids = [f"q{i}" for i in range(40)]
    texts = {q: f"查询{i}" for i, q in enumerate(qids)}
    rel = {q: {f"p{i}": 1.0} for i, q in enumerate(qids)}
    first = [1.0] * 40
    second = [1.0] * 39 + [0.25]  # the second stage loses q39's product from 1st to 4th place
    run1 = {q: {f"p{i}": 3.0, "x": 2.0} for i, q in enumerate(qids)}
    run2 = {**run1, "q39": {"x": 4.0, "y": 3.0, "z": 2.0, "p39": 1.0}}
    titles = {"p39": "蓝牙耳机 | 降噪", "x": "手机壳", "y": "充电器", "z": "数据线"}
    payload = write_report(
        tmp_path, [_stage("bm25", first, run1), _stage("rerank", second, run2)], {"config": "t"}, texts, rel, titles
    )
    sig = json.loads((tmp_path / "significance.json").read_text())
    assert sig["intervals"]["bm25"]["mrr@10"]["ci_low"] == 1.0
    g = sig["gains"]["rerank vs bm25"]["mrr@10"]
    assert g["diff"] == pytest.approx(-0.75 / 40) and g["ci_high"] <= 0
    report = (tmp_path / "report.md").read_text()
    assert "## Confidence" in report and "| rerank vs bm25 |" in report
    hurt = report.split("The queries each stage hurt most")[1]
    assert "0 queries up, 1 down" in hurt and "查询39" in hurt and "1.00 → 0.25" in hurt
    assert "手机壳; 充电器; 数据线" in hurt and "蓝牙耳机 / 降噪" in hurt  # titles, table-safe
    rows = (tmp_path / "per_query.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:4] == ["qid", "query", "bm25:mrr@10", "bm25:ndcg@10"]
    assert len(rows) == 41 and rows[-1].split("\t")[1] == "查询39" and rows[-1].split("\t")[5] == "0.2500"
    assert payload["rerank"]["mrr@10"] == pytest.approx(39.25 / 40, abs=1e-4)


def test_compare_takes_configs_or_model_folders(tmp_path):
    from eval.__main__ import variant
    from core.config import ConfigError, load_config

    from conftest import ROOT

    cfg = load_config(ROOT / "configs/demo.yaml")
    (tmp_path / "ranker").mkdir()
    (tmp_path / "ranker" / "model.txt").write_text("tree")
    (tmp_path / "bi").mkdir()
    (tmp_path / "bi" / "modules.json").write_text("[]")
    (tmp_path / "ce").mkdir()
    (tmp_path / "ce" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    assert variant(cfg, str(tmp_path / "ranker")).rerank.ranker == str((tmp_path / "ranker").resolve())
    assert variant(cfg, str(tmp_path / "bi")).dense.model == str((tmp_path / "bi").resolve())
    v = variant(cfg, str(tmp_path / "ce"))
    assert v.rerank.model == str((tmp_path / "ce").resolve()) and v.dense.model == cfg.dense.model
    assert variant(cfg, str(ROOT / "configs/wentian.yaml")).name == "wentian"
    for bad in ("empty", "nope"):
        with pytest.raises(ConfigError, match="--compare"):
            variant(cfg, str(tmp_path / bad))
    # settings over the config and its --set: the spec wins where both set a field
    v = variant(cfg, "rerank.teacher=models/t,rerank.teacher_top=3", {"rerank": {"depth": 7, "teacher_top": 9}})
    assert (v.rerank.teacher, v.rerank.teacher_top, v.rerank.depth) == ("models/t", 3, 7)
    with pytest.raises(ConfigError, match="teacher"):
        variant(cfg, "rerank.teacher=models/t,rerank.teacher_top=1")
