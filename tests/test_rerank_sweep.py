"""The rerank sweep's score cache: reused for the same model and pairs, recomputed when either changes."""

import os

import numpy as np

from eval.rerank_sweep import cached_scores


class CountingScorer:
    def __init__(self):
        self.calls = 0

    def predict(self, queries, titles):
        self.calls += 1
        return np.array([len(q) + 10 * len(t) for q, t in zip(queries, titles)], dtype=np.float32)


def test_scores_are_cached_per_model_and_pairs(tmp_path):
    model = tmp_path / "ce"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights-v1")
    cache = tmp_path / "scores"
    ce = CountingScorer()
    q, t = ["手机", "耳机"], ["华为手机 黑色", "蓝牙耳机"]

    first, seconds = cached_scores(ce, model, q, t, cache)
    assert ce.calls == 1 and seconds is not None
    again, seconds = cached_scores(ce, model, q, t, cache)
    assert ce.calls == 1 and seconds is None
    np.testing.assert_array_equal(first, again)

    cached_scores(ce, model, q, ["华为手机 白色", "蓝牙耳机"], cache)
    assert ce.calls == 2, "other pairs must be scored, not read from the cache"

    st = (model / "model.safetensors").stat()
    (model / "model.safetensors").write_bytes(b"weights-v2")
    os.utime(model / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    cached_scores(ce, model, q, t, cache)
    assert ce.calls == 3, "a retrained model must not reuse the old model's scores"


def test_pseudo_label_precision_rises_with_the_teachers_margin():
    from eval.cascade import pseudo_label_precision

    rng = np.random.default_rng(0)
    margins = rng.exponential(1.0, 2000)
    right = rng.random(2000) < 1 - np.exp(-margins)  # surer tops are right more often
    rows = pseudo_label_precision(margins, right)
    assert [r["share"] for r in rows] == sorted((r["share"] for r in rows), reverse=True) and rows[0]["share"] == 1
    assert rows[-1]["precision"] > rows[0]["precision"] + 0.2
    assert rows[0]["ci"][0] < rows[0]["precision"] < rows[0]["ci"][1]
