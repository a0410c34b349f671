import json

import pytest

from engine import SearchEngine
from eval.__main__ import main as eval_main
from eval.sim.demo_data import write_demo
from core.formats.clicklog import EVENTS, read_clicklog
from indexer.build import build_indexes
from core.formats.catalog import read_catalog

from conftest import ROOT, make_config


@pytest.fixture(scope="module")
def demo_cfg(demo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = make_config(
        tmp,
        demo_dir / "catalog.jsonl",
        text={"unknown_word_ngrams": 1},
        eval={"queries": str(demo_dir / "queries.tsv")},
    )
    build_indexes(cfg, progress=False)
    return cfg


def test_demo_data_is_deterministic_and_valid(demo_dir, tmp_path):
    write_demo(tmp_path, n_products=600, n_users=120)
    for name in ("catalog.jsonl", "clicks.jsonl", "queries.tsv"):
        assert (tmp_path / name).read_bytes() == (demo_dir / name).read_bytes()
    cat = read_catalog(demo_dir / "catalog.jsonl")
    assert len(cat) == 600 and len(set(cat.categories)) == 23 and not cat.rejected
    assert any("GB" in t or "ml" in t for t in cat.titles)
    events = read_clicklog(demo_dir / "clicks.jsonl")
    assert {e.event for e in events} == set(EVENTS)
    assert all(a.timestamp <= b.timestamp for a, b in zip(events, events[1:]))


def test_user_brand_preferences_show_in_clicks(demo_dir):
    """Simulated users click their preferred brand far above its share of impressions."""
    events = read_clicklog(demo_dir / "clicks.jsonl")
    cat = read_catalog(demo_dir / "catalog.jsonl")
    brand = dict(zip(cat.ids, cat.brands))
    from collections import Counter

    by_user = {}
    for e in events:
        if e.event == "click":
            by_user.setdefault(e.user_id, Counter())[brand[e.product_id]] += 1
    top_share = [c.most_common(1)[0][1] / sum(c.values()) for c in by_user.values() if sum(c.values()) >= 8]
    assert sum(top_share) / len(top_share) > 0.3


def test_shoppers_click_titles_that_match_the_query_and_pass_over_those_that_do_not(demo_dir):
    """Clicks depend on how well a title fits the query (brand, model, capacity, colour), not on taste alone:
    among what a search showed, the clicked titles carry more of the query's words than the ones passed over."""
    import re

    import numpy as np

    events = read_clicklog(demo_dir / "clicks.jsonl")
    title = dict(zip(*(lambda c: (c.ids, c.titles))(read_catalog(demo_dir / "catalog.jsonl"))))
    clicked = {(e.user_id, e.query, e.product_id) for e in events if e.event == "click"}
    hit, miss = [], []
    for e in events:
        if e.event != "impression":
            continue
        words = [w for w in re.split(r"\s+", e.query.lower()) if w]
        share = sum(w in title[e.product_id].lower() for w in words) / len(words)
        (hit if (e.user_id, e.query, e.product_id) in clicked else miss).append(share)
    assert len(hit) > 200 and np.mean(hit) > np.mean(miss) + 0.2  # the taste-only generator: +0.13


def test_engine_query_and_filters(demo_cfg):
    eng = SearchEngine.from_config(demo_cfg)
    hits = eng.query("华为 手机", k=10)
    assert len(hits) == 10 and [h.rank for h in hits] == list(range(1, 11))
    assert all("华为" in h.title or "huawei" in h.title.lower() for h in hits[:5])
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    cheap = eng.query("耳机", k=20, filters={"category": "耳机", "price_max": 300})
    rows = [eng.products.row_of(h.product_id) for h in cheap]
    assert cheap and all(eng.products.prices[r] <= 300 for r in rows)
    with pytest.raises(ValueError, match="unknown filter"):
        eng.query("耳机", filters={"colour": "red"})


def test_eval_cli_writes_metrics_and_report(demo_cfg, tmp_path):
    cfg_file = tmp_path / "demo.yaml"
    import yaml

    cfg_file.write_text(
        yaml.safe_dump(
            {
                "name": "demo",
                "root": ".",
                "catalog": {"path": str(demo_cfg.catalog.path)},
                "index_dir": str(demo_cfg.index_dir),
                "text": {"unknown_word_ngrams": 1},
            }
        ),
        encoding="utf-8",
    )
    queries = demo_cfg.eval.queries
    assert (
        eval_main(
            [
                "--config",
                str(cfg_file),
                "--queries",
                str(queries),
                "--stages",
                "bm25",
                "--out",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(m) == {"bm25"}
    for key in ("mrr@10", "ndcg@10", "recall@10", "recall@100", "recall@1000", "n_queries"):
        assert key in m["bm25"]
    assert m["bm25"]["n_queries"] > 20
    # BM25 finds the clicked products of the demo's queries far better than chance
    assert m["bm25"]["recall@100"] > 0.5 and m["bm25"]["mrr@10"] > 0.1
    assert m["bm25"]["recall@10"] <= m["bm25"]["recall@100"] <= m["bm25"]["recall@1000"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| bm25 |" in report and (tmp_path / "out" / "recall.png").stat().st_size > 1000


def test_eval_compare_gives_the_paired_difference_of_two_configs(demo_cfg, tmp_path):
    import yaml

    files = []
    for name, k1 in (("a", 1.2), ("b", 0.3)):
        f = tmp_path / f"{name}.yaml"
        f.write_text(
            yaml.safe_dump(
                {
                    "name": "demo",
                    "root": ".",
                    "catalog": {"path": str(demo_cfg.catalog.path)},
                    "index_dir": str(tmp_path / f"idx-{name}"),
                    "text": {"unknown_word_ngrams": 1},
                    "bm25": {"k1": k1},
                }
            ),
            encoding="utf-8",
        )
        files.append(str(f))
    q = str(demo_cfg.eval.queries)
    assert (
        eval_main(
            [
                "--config",
                files[0],
                "--queries",
                q,
                "--stages",
                "bm25",
                "--out",
                str(tmp_path / "same"),
                "--compare",
                files[0],
                files[0],
                "--no-progress",
            ]
        )
        == 0
    )
    same = json.loads((tmp_path / "same" / "compare.json").read_text())["stages"]["bm25"]["mrr@10"]
    assert same["diff"] == 0 and same["p_value"] == 1.0 and same["ci_low"] == same["ci_high"] == 0
    assert (
        eval_main(
            [
                "--config",
                files[0],
                "--queries",
                q,
                "--stages",
                "bm25",
                "--out",
                str(tmp_path / "k1"),
                "--compare",
                *files,
                "--no-progress",
            ]
        )
        == 0
    )
    d = json.loads((tmp_path / "k1" / "compare.json").read_text())["stages"]["bm25"]
    a = json.loads((tmp_path / "k1" / "A" / "metrics.json").read_text())["bm25"]
    b = json.loads((tmp_path / "k1" / "B" / "metrics.json").read_text())["bm25"]
    assert d["mrr@10"]["diff"] == pytest.approx(b["mrr@10"] - a["mrr@10"], abs=2e-4) and d["mrr@10"]["diff"] != 0
    assert d["mrr@10"]["ci_low"] <= d["mrr@10"]["diff"] <= d["mrr@10"]["ci_high"]
    assert "| bm25 | mrr@10 |" in (tmp_path / "k1" / "compare.md").read_text()


def test_eval_cli_rejects_unknown_stage(tmp_path, capsys):
    assert (
        eval_main(
            [
                "--config",
                str(ROOT / "configs/demo.yaml"),
                "--queries",
                "x.tsv",
                "--stages",
                "dense2",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "unknown stage" in capsys.readouterr().err
