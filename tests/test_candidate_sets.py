"""The candidate sets the final ranker orders: stage scores looked up deeper than the lists that chose them."""

import dataclasses

import numpy as np
import pytest

from core.config import ConfigError

QUERIES = ["蓝牙耳机", "运动鞋 男", "手机壳", "咖啡机"]


def _engine(cfg, depth: int, lookup: int, **rerank):
    from engine.search import SearchEngine

    r = dataclasses.replace(cfg.rerank, depth=depth, lookup_depth=lookup, **rerank)
    return SearchEngine.from_config(dataclasses.replace(cfg, rerank=r))


def test_lookup_depth_gives_one_stage_candidates_the_other_stages_exact_score(live_cfg):
    plain, deep = _engine(live_cfg, 4, 0), _engine(live_cfg, 4, 40)
    exact = 0
    for q in QUERIES:
        assert plain.understand(q).text == q  # candidate_sets takes understood text
        a, b = plain.candidate_sets([q])[0], deep.candidate_sets([q])[0]
        assert a.rows.tolist() == b.rows.tolist()  # the same candidates, in the same order
        np.testing.assert_allclose(a.ce, b.ce, rtol=1e-5)
        for stage in ("bm25", "dense"):
            full = deep.retrieve(q, k=40, stage=stage)
            pos = {int(r): i for i, r in enumerate(full.rows)}
            for j, row in enumerate(b.rows):
                if int(row) in pos:  # within the stage's top 40: its own score and rank there
                    assert b.stage_scores[stage][j] == pytest.approx(float(full.scores[pos[int(row)]]), rel=1e-5)
                    assert b.stage_ranks[stage][j] == pos[int(row)] + 1
                    if pos[int(row)] >= 4:  # outside the top 4 that chose the candidates
                        exact += 1
                        assert a.stage_ranks[stage][j] == 5  # before: absent, rank depth + 1
                        assert a.stage_scores[stage][j] >= b.stage_scores[stage][j] - 1e-6  # the list's lowest
                else:
                    assert b.stage_ranks[stage][j] == 41
        # the features do not depend on how deep a request asks (a long page fetches longer lists)
        c = deep.candidate_sets([q], deep=200)[0]
        assert c.rows.tolist() == b.rows.tolist()
        for stage in ("bm25", "dense"):
            np.testing.assert_array_equal(c.stage_scores[stage], b.stage_scores[stage])
            np.testing.assert_array_equal(c.stage_ranks[stage], b.stage_ranks[stage])
    assert exact > 0, "no candidate was found deeper in the other list: the test would not see a broken lookup"


def test_lookup_depth_below_the_rerank_depth_is_refused(tmp_path, demo_dir):
    from conftest import make_config

    with pytest.raises(ConfigError, match="lookup_depth"):
        rerank = {"model": "models/ce", "depth": 20, "lookup_depth": 10}
        make_config(tmp_path, demo_dir / "catalog.jsonl", rerank=rerank)


def test_a_ranker_is_served_only_with_the_lookup_it_learnt_from(live_cfg):
    from engine.models import ModelMismatchError

    ranker = str(live_cfg.finetune.out_dir / "ranker")  # the tiny job's ranker: it learnt without a lookup
    assert _engine(live_cfg, 4, 0, ranker=ranker).query("手机壳", k=5).hits
    with pytest.raises(ModelMismatchError, match="lookup_depth 40"):
        _engine(live_cfg, 4, 40, ranker=ranker).query("手机壳", k=5)
    # the online experiment's candidate ranker is held to the same lookup
    serve = dataclasses.replace(
        live_cfg.serve, interleave=dataclasses.replace(live_cfg.serve.interleave, candidate=ranker)
    )
    assert _engine(dataclasses.replace(live_cfg, serve=serve), 4, 0)._version.ranker("candidate") is not None
    with pytest.raises(ModelMismatchError, match="lookup_depth 40"):
        _engine(dataclasses.replace(live_cfg, serve=serve), 4, 40)._version.ranker("candidate")
