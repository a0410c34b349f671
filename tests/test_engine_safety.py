"""The engine under concurrency and change: threads, micro-batching, reloads, deletes from other processes,
query input that used to mislead, and the ONNX runtime."""

import multiprocessing
import threading
import warnings

import numpy as np
import pytest

from engine.batching import MicroBatcher
from engine.search import SearchEngine
from engine.types import EcomsearchError, QueryError, QueryResult
from indexer.build import build_indexes
from indexer.deleted import deleted_ids
from indexer.updates import delete_products

QUERIES = ["蓝牙耳机", "华为手机", "洗衣液 3kg", "猫粮", "降噪耳机 sony", "iphone 256gb", "连衣裙", "机械键盘"]


def _ids(res):
    return [h.product_id for h in res]


def test_sixteen_threads_of_mixed_queries_match_the_sequential_answers(live_cfg):
    import dataclasses

    # no candidate cache: every concurrent query does its own model work
    eng = SearchEngine.from_config(
        dataclasses.replace(live_cfg, search=dataclasses.replace(live_cfg.search, cache_size=0))
    )
    eng.record_event("alice", eng.products.ids[5], "purchase")
    calls = [
        dict(text=q, k=k, user_id=u, filters=f)
        for q in QUERIES
        for k in (5, 20)
        for u in (None, "alice")
        for f in (None, {"price_max": 500.0})
    ]
    expected = [_ids(eng.query(c["text"], k=c["k"], user_id=c["user_id"], filters=c["filters"])) for c in calls]
    eng.enable_batching(5.0, 4096)  # concurrent queries now share cross-encoder batches
    got = [None] * len(calls)
    errors = []

    def work(t):
        try:
            for i in range(t, len(calls), 16):
                c = calls[i]
                got[i] = _ids(eng.query(c["text"], k=c["k"], user_id=c["user_id"], filters=c["filters"]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert got == expected
    batcher = eng.version.models.scorer
    assert batcher.batches < batcher.requests  # requests really were gathered into shared batches


def test_micro_batcher_returns_each_request_its_own_scores():
    class Model:
        calls = []

        def predict(self, qs, ts):
            self.calls.append(len(qs))
            return np.array([len(q) * 100 + len(t) for q, t in zip(qs, ts)], dtype=np.float32)

    m = Model()
    b = MicroBatcher(m, window_ms=20, max_pairs=10_000)
    out = [None] * 8

    def ask(i):
        out[i] = b.predict(["q" * i] * (i + 1), ["t" * j for j in range(i + 1)])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        np.testing.assert_array_equal(out[i], [i * 100 + j for j in range(i + 1)])
    assert len(m.calls) < 8 and sum(m.calls) == sum(range(1, 9))


def test_reload_under_load_switches_atomically_and_deletes_are_never_seen_after_they_return(live_cfg):
    eng = SearchEngine.from_config(live_cfg)
    before = eng.version.versions()
    stop = threading.Event()
    deleted_at: dict[str, int] = {}
    seen = []
    errors = []
    counter = [0]

    def client():
        i = 0
        while not stop.is_set():
            try:
                start = len(deleted_at)
                gone = set(deleted_at)
                res = eng.query(QUERIES[i % len(QUERIES)], k=30)
                v = res.versions
                seen.append((v["bm25"], v["dense"]))
                bad = gone & set(_ids(res))
                if bad:
                    errors.append(f"deleted {bad} returned (deleted before the query started: {start})")
                counter[0] += 1
            except Exception as e:
                errors.append(repr(e))
            i += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    top = _ids(eng.query("蓝牙耳机", k=5))
    for pid in top[:2]:
        eng.delete([pid])
        deleted_at[pid] = 1
    build_indexes(live_cfg, progress=False)  # a full rebuild swapped in under the running engine
    out = eng.reload()
    delete_products(live_cfg, [top[2]])  # another process's delete: seen by the next query
    deleted_at[top[2]] = 1
    import time

    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    after = eng.version.versions()
    assert not errors, errors[:3]
    assert counter[0] > 10
    assert out["changed"] and after["bm25"] != before["bm25"] and after["dense"] != before["dense"]
    # every answer came from one version: never a new bm25 with the old dense index or the reverse
    assert set(seen) <= {(before["bm25"], before["dense"]), (after["bm25"], after["dense"])}
    assert eng.reload()["changed"] is False  # nothing new since
    assert not set(top[:3]) & set(_ids(eng.query("蓝牙耳机", k=50)))


def _delete_in_process(cfg, ids):
    for pid in ids:
        delete_products(cfg, [pid])


def test_deletes_from_two_processes_at_once_lose_nothing(live_cfg):
    ids = SearchEngine.from_config(live_cfg, load_models=False).products.ids.tolist()[:40]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_delete_in_process, args=(live_cfg, ids[i::2])) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    assert deleted_ids(live_cfg) == set(ids)


def test_queries_with_nothing_to_search_return_nothing_with_a_reason_in_every_stage(live_cfg):
    eng = SearchEngine.from_config(live_cfg)
    for text in ("", "   ", "😀🎧", "\x00\x07", "!!!"):
        res = eng.query(text)
        assert isinstance(res, QueryResult) and len(res) == 0 and res.reason
        for stage in ("bm25", "dense", "hybrid", "rerank"):
            assert len(eng.retrieve(text, k=5, stage=stage).rows) == 0
    assert len(eng.query("\u200b蓝牙\x00耳机\u202e")) > 0  # controls stripped, the words kept
    assert eng.query("蓝牙\x00耳机").query == "蓝牙耳机"


def test_long_queries_are_cut_and_report_it(live_cfg):
    eng = SearchEngine.from_config(live_cfg)
    res = eng.query("蓝牙耳机 " * 200_000)  # ~1 MB
    assert res.truncated and len(res.query) <= eng.cfg.search.max_query_chars and len(res) > 0


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"k": 2.5}, "k"),
        ({"k": "5"}, "k"),
        ({"k": True}, "k"),
        ({"k": 0}, "k"),
        ({"k": 10**6}, "k"),
        ({"offset": -1}, "offset"),
        ({"filters": "category=耳机"}, "filters"),
        ({"filters": {"price_max": "500"}}, "price_max"),
        ({"filters": {"category": 3}}, "category"),
        ({"filters": {"price_max": float("nan")}}, "price_max"),
        ({"filters": {"category": {"a": 1}}}, "category"),
        ({"filters": {"colour": "red"}}, "colour"),
        ({"personalize": 1.5}, "personalize"),
        ({"user_id": ""}, "user"),
    ],
)
def test_bad_query_arguments_raise_a_query_error_naming_them(live_cfg, kwargs, param):
    eng = SearchEngine.from_config(live_cfg, load_models=False)
    with pytest.raises(QueryError) as e:
        eng.query("蓝牙耳机", **kwargs)
    assert e.value.param == param and isinstance(e.value, EcomsearchError) and isinstance(e.value, ValueError)


def test_a_filter_that_matches_nothing_warns_nothing(live_cfg):
    eng = SearchEngine.from_config(live_cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(eng.query("蓝牙耳机", filters={"price_max": 0.0001})) == 0
        assert len(eng.query("蓝牙耳机", filters={"brand": "没有这个牌子"})) == 0


def test_offset_pages_and_query_batch_agree_with_single_queries(live_cfg):
    eng = SearchEngine.from_config(live_cfg)
    full = eng.query("蓝牙耳机", k=12)
    page = eng.query("蓝牙耳机", k=4, offset=8)
    assert _ids(page) == _ids(full)[8:12] and [h.rank for h in page] == [9, 10, 11, 12]
    batch = eng.query_batch(QUERIES, k=7)
    assert [_ids(r) for r in batch] == [_ids(eng.query(q, k=7)) for q in QUERIES]
    assert full.versions["bm25"] and full.timings_ms["total"] > 0 and full.to_dict()["hits"][0]["rank"] == 1


def test_the_candidate_cache_serves_repeats_for_every_user_and_forgets_deleted_products(live_cfg):
    eng = SearchEngine.from_config(live_cfg)
    a = eng.query("蓝牙耳机", k=10)
    b = eng.query("蓝牙耳机", k=10, user_id="someone")
    assert _ids(a) == _ids(b) and eng.version.cache_hits == 1
    eng.delete([a[0].product_id])
    assert a[0].product_id not in _ids(eng.query("蓝牙耳机", k=10))


def test_onnx_runtime_scores_and_vectors_match_torch(live_cfg):
    import dataclasses

    from engine.onnx_models import OnnxCrossEncoder
    from finetune.export_onnx import export_config

    reports = export_config(live_cfg)
    assert {r["kind"] for r in reports} == {"cross-encoder", "query-encoder"}
    assert all(r["max_abs_diff_fp32"] < 1e-3 for r in reports)
    torch_eng = SearchEngine.from_config(live_cfg)
    cfg = dataclasses.replace(
        live_cfg,
        rerank=dataclasses.replace(live_cfg.rerank, runtime="onnx"),
        dense=dataclasses.replace(live_cfg.dense, query_runtime="onnx"),
    )
    onnx_eng = SearchEngine.from_config(cfg)
    assert isinstance(onnx_eng.cross_encoder(), OnnxCrossEncoder)
    qs, ts = ["蓝牙耳机"] * 5, onnx_eng.products.titles.take(range(5))
    np.testing.assert_allclose(
        onnx_eng.cross_encoder().predict(qs, ts), torch_eng.cross_encoder().predict(qs, ts), atol=1e-4
    )
    np.testing.assert_allclose(
        onnx_eng.dense_stage("dense")[0].encode_queries(QUERIES),
        torch_eng.dense_stage("dense")[0].encode_queries(QUERIES),
        atol=1e-4,
    )
    for q in QUERIES:
        assert _ids(onnx_eng.query(q, k=10)) == _ids(torch_eng.query(q, k=10))
    assert "onnx" in onnx_eng.query("猫粮").versions["cross_encoder"]
    from eval.__main__ import describe_run  # what an eval report says it ran: ONNX models described too

    described = describe_run(cfg, onnx_eng, ["dense", "rerank"])
    assert "onnx" in described["rerank"] and "onnx" in described["dense encoder"]


def test_distillation_trains_a_smaller_student_from_teacher_scores_and_resumes_its_cache(live_cfg, tmp_path):
    import json
    from pathlib import Path

    import yaml

    from finetune.distill import main as distill

    raw = {
        "name": "t",
        "root": str(live_cfg.root),
        "catalog": {"path": str(live_cfg.catalog.path)},
        "index_dir": str(live_cfg.index_dir),
        "text": {"unknown_word_ngrams": 1},
        "dense": {"model": str(live_cfg.dense.model), "base_model": str(live_cfg.dense.base_model), "max_length": 64},
        "search": {"stages": ["bm25", "dense"]},
        "finetune": {"train": str(live_cfg.finetune.train)},
        "eval": {"queries": str(live_cfg.eval.queries)},
    }
    cfg_path = tmp_path / "t.yaml"
    cfg_path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    log = tmp_path / "log.tsv"
    log.write_text("qid\tquery\n1\t蓝牙耳机 降噪\n2\t猫粮 成猫\n3\t洗衣液\n", encoding="utf-8")
    teacher = live_cfg.rerank.model
    args = [
        "--config",
        str(cfg_path),
        "--teacher",
        str(teacher),
        "--layers",
        "1",
        "--out",
        str(tmp_path / "s"),
        "--train-queries",
        "30",
        "--log-queries",
        "3",
        "--querylog",
        str(log),
        "--depth",
        "10",
        "--held-out",
        "5",
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--group",
        "4",
        "--max-length",
        "32",
    ]
    assert distill(args) == 0
    card = json.loads((tmp_path / "s" / "model_card.json").read_text())
    assert card["layers"] == 1 and 1 <= card["queries"]["querylog"] <= 3 and card["pairs"] > 0
    assert json.loads((tmp_path / "s" / "config.json").read_text())["num_hidden_layers"] == 1
    chunks = list((tmp_path / "s.teacher-cache").rglob("chunk-*.json"))
    assert chunks
    # a second run reads the teacher's scores from the cache (no teacher pass): same pairs
    assert distill(args) == 0
    assert json.loads((tmp_path / "s" / "model_card.json").read_text())["pairs"] == card["pairs"]
    chunks[0].write_text(chunks[0].read_text()[:20])  # a chunk cut short by a killed run is scored again
    assert distill(args) == 0
    assert json.loads((tmp_path / "s" / "model_card.json").read_text())["pairs"] == card["pairs"]
    assert json.loads(chunks[0].read_text()) and not list((tmp_path / "s.teacher-cache").rglob("*.tmp*"))
    # continuing a trained cross-encoder, with the judged positives' cross-entropy beside the KL term
    cont = [*args[: args.index("--out")], "--out", str(tmp_path / "c"), *args[args.index("--out") + 2 :]]
    assert distill([*cont, "--init", str(teacher), "--label-weight", "1.0"]) == 0
    card = json.loads((tmp_path / "c" / "model_card.json").read_text())
    layers = json.loads((Path(teacher) / "config.json").read_text())["num_hidden_layers"]
    assert card["init"] == str(teacher) and card["layers"] == layers and card["judged_queries"] > 0
    assert "cross-entropy of the judged positive" in card["loss"]


def test_distillation_groups_hold_the_teachers_best_and_the_judged_positive():
    from finetune.distill import batches

    rng = np.random.default_rng(0)
    data = [(f"q{i}", [f"t{i}-{j}" for j in range(10)], rng.normal(size=10).astype(np.float32)) for i in range(8)]
    positives = {"q0": {"t0-7"}, "q1": {"not a candidate"}}
    for batch in [next(batches(data, 4, 4, np.random.default_rng(s), positives)) for s in range(6)]:
        for q, titles, scores, label in batch:
            full = next(d for d in data if d[0] == q)
            assert titles[0] == full[1][int(np.argmax(full[2]))] and len(set(titles)) == 4
            if q == "q0":
                assert label >= 0 and titles[label] == "t0-7"
            else:
                assert label == -1
