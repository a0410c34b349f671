import pytest

from engine import SearchEngine
from core.formats.clicklog import Event, read_clicklog
from finetune.data import from_clicklog, from_judged, mine_hard_negatives, near_duplicate, split_by_time, time_cut
from indexer.build import build_indexes

from conftest import make_config


def test_time_split_never_trains_on_the_future(demo_dir):
    events = read_clicklog(demo_dir / "clicks.jsonl")
    cut = time_cut(events, 0.8)
    train, held = split_by_time(events, cut)
    assert len(train) + len(held) == len(events)
    assert max(e.timestamp for e in train) < cut <= min(e.timestamp for e in held)
    assert 0.75 < len(train) / len(events) < 0.85


def test_gains_and_negatives_from_the_click_log():
    ev = [
        Event("u", "耳机", "A", "impression", 1),
        Event("u", "耳机", "A", "click", 2),
        Event("u", "耳机", "A", "purchase", 3),
        Event("u", "耳机", "B", "impression", 1),
        Event("v", "耳机", "C", "add_to_cart", 5),
        Event("v", "猫粮", "D", "impression", 6),
    ]
    data = from_clicklog(ev)
    assert list(data.texts.values()) == ["耳机"]
    assert data.positives["c0"] == {"A": 3.0, "C": 2.0}
    assert data.negatives == {}
    with_neg = from_clicklog(ev, impressions_as_negatives=True)
    q = {t: q for q, t in with_neg.texts.items()}
    assert with_neg.negatives[q["耳机"]] == {"B"} and with_neg.negatives[q["猫粮"]] == {"D"}
    assert from_clicklog(ev, gains={"click": 1}).positives["c0"] == {"A": 1.0}


def test_judged_pairs():
    data = from_judged({"q1": "水杯"}, {"q1": {"P1": 3, "P2": 1}}, min_relevance=1)
    assert data.positives == {"q1": {"P1": 3.0}} and data.negatives == {"q1": {"P2"}}
    # graded (Home Depot): rated at least 2.5 is a positive, rated below a known negative of its query
    graded = from_judged({"q": "pvc pipe"}, {"q": {"A": 3, "B": 2.33, "C": 2.67, "D": 1, "E": 2.5}}, positive_at=2.5)
    assert graded.positives == {"q": {"A": 3.0, "C": 2.67, "E": 2.5}} and graded.negatives == {"q": {"B", "D"}}
    assert from_judged({"q": "x"}, {"q": {"A": 3, "B": 1}}).negatives == {"q": set()}  # ungraded: all positives


def test_near_duplicate_titles():
    assert near_duplicate("华为 Mate60 手机 黑色 256GB", "华为Mate60手机 256GB 黑色")
    assert not near_duplicate("华为 Mate60 手机", "小米 Redmi 手机 蓝色")


def test_hard_negatives_come_from_the_window_and_are_cached(demo_dir, tmp_path):
    cfg = make_config(tmp_path, demo_dir / "catalog.jsonl")
    build_indexes(cfg, progress=False)
    eng = SearchEngine.from_config(cfg)
    data = from_clicklog(read_clicklog(demo_dir / "clicks.jsonl"))
    negs = mine_hard_negatives(eng, data, stages=("bm25",), window=(5, 30), per_query=3, cache_dir=tmp_path)
    assert set(negs) == set(data.texts)
    for qid, pids in negs.items():
        assert len(pids) <= 3 and not set(pids) & set(data.positives[qid])
        window = {eng.products.ids[int(r)] for r in eng.retrieve(data.texts[qid], 30, "bm25").rows[5:30]}
        assert set(pids) <= window
    assert sum(len(p) for p in negs.values()) > 2 * len(negs)

    def boom(*a, **k):
        raise AssertionError("a cached mining run must not search again")

    eng.retrieve_many = boom
    assert mine_hard_negatives(eng, data, stages=("bm25",), window=(5, 30), per_query=3, cache_dir=tmp_path) == negs
    with pytest.raises(AssertionError):  # other settings: not cached
        mine_hard_negatives(eng, data, stages=("bm25",), window=(5, 40), per_query=3, cache_dir=tmp_path)
