"""Slow checks on the real datasets in ../shared/datasets (skipped where absent): `make test-slow`."""

import json

import pytest

from conftest import ROOT, SHARED

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not (SHARED / "wentian" / "dev.tsv").is_file(), reason="../shared/datasets/wentian is absent")
def test_wentian_bm25_beats_the_jieba_baseline(tmp_path):
    from eval.__main__ import main

    out = tmp_path / "wentian"
    assert main(["--config", str(ROOT / "configs/wentian.yaml"), "--stages", "bm25", "--out", str(out),
                 "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())["bm25"]
    assert m["n_queries"] == 1000
    # plain jieba search-mode tokens with bm25s defaults: MRR@10 0.362, Recall@100 0.663
    assert m["mrr@10"] >= 0.50 and m["recall@100"] >= 0.80


@pytest.mark.skipif(not (SHARED / "homedepot" / "dev.tsv").is_file(), reason="../shared/datasets/homedepot is absent")
def test_homedepot_english_titles(tmp_path):
    from eval.__main__ import main

    out = tmp_path / "hd"
    assert main(["--config", str(ROOT / "configs/homedepot.yaml"), "--stages", "bm25", "--out", str(out),
                 "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())["bm25"]
    assert m["n_queries"] == 1000 and m["recall@100"] > 0.4
