"""Defects a new user hit, each pinned by a test: nothing vanishes, nothing ends in a traceback."""

import json
import subprocess
import sys

import pytest
import yaml

from engine.search import SearchEngine
from indexer.build import build_indexes
from core.formats.catalog import CatalogError, read_catalog
from core.config import ConfigError, load_config
from indexer.store import IndexLoadError

from conftest import ROOT


def write_config(tmp_path, catalog, **extra):
    raw = {
        "name": "t",
        "root": str(ROOT),
        "catalog": {"path": str(catalog)},
        "index_dir": str(tmp_path / "idx"),
        "search": {"stages": ["bm25"]},
        **extra,
    }
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture()
def bm25_cfg(demo_dir, tmp_path):
    path = write_config(tmp_path, demo_dir / "catalog.jsonl")
    build_indexes(load_config(path), progress=False)
    return path


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_add_with_skip_bad_rows_writes_the_rejects_and_counts_them(bm25_cfg, tmp_path):
    new = jsonl(
        tmp_path / "new.jsonl",
        [{"id": "A1", "title": "全新 蓝牙 音箱 便携"}, {"id": "A2", "title": ""}, {"id": ["x"], "title": "列表 id"}],
    )
    r = run("-m", "indexer", "--config", str(bm25_cfg), "--add", str(new), "--skip-bad-rows", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "2 rejected row(s)" in r.stdout
    rejects = [json.loads(x) for x in (tmp_path / "idx.added.rejected.jsonl").read_text().splitlines()]
    assert [x["line"] for x in rejects] == [2, 3] and "must be a string or an integer" in rejects[1]["reason"]


def test_additions_survive_a_full_rebuild_and_deletes_stay_deleted(bm25_cfg, tmp_path):
    cfg = load_config(bm25_cfg)
    new = jsonl(tmp_path / "new.jsonl", [{"id": "A1", "title": "量子波动 速读 机器人", "brand": "新品牌"}])
    assert run("-m", "indexer", "--config", str(bm25_cfg), "--add", str(new)).returncode == 0
    victim = SearchEngine.from_config(cfg).query("蓝牙耳机", k=1)[0].product_id
    assert run("-m", "indexer", "--config", str(bm25_cfg), "--delete", victim).returncode == 0
    build_indexes(cfg, progress=False)  # `make index`
    eng = SearchEngine.from_config(cfg)
    assert eng.query("量子波动 速读 机器人", k=1)[0].product_id == "A1"
    assert "A1" in eng.products.ids.tolist() and victim not in eng.products.ids.tolist()
    assert victim not in [h.product_id for h in eng.query("蓝牙耳机", k=100)]


def test_a_csv_field_over_the_csv_module_limit_is_a_row_error_not_a_crash(tmp_path):
    f = tmp_path / "c.csv"
    f.write_text("id,title\n1,好的 标题\n2," + "长" * 200_000 + "\n3,另一个 标题\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="c.csv:3.*title.*more than 2,000"):
        read_catalog(f)
    cat = read_catalog(f, skip_bad_rows=True)
    assert cat.ids == ["1", "3"] and len(cat.rejected) == 1
    f.write_text('id,title\n1,ok\n2,"' + "x" * (1 << 21) + '"\n', encoding="utf-8")  # over even the raised limit
    cat = read_catalog(f, skip_bad_rows=True)
    assert cat.ids == ["1"] and "characters per field" in cat.rejected[0].reason


def test_invalid_utf8_in_a_csv_header_is_reported_as_such(tmp_path):
    f = tmp_path / "c.csv"
    f.write_bytes(b"id,t\xffitle\n1,a\n2,b\n")
    with pytest.raises(CatalogError, match=r"c.csv:1: the header row is not valid UTF-8"):
        read_catalog(f)


def test_when_every_row_is_bad_the_rejects_still_say_why(demo_dir, tmp_path):
    bad = jsonl(tmp_path / "bad.jsonl", [{"id": "1", "title": ""}, {"title": "no id"}])
    path = write_config(tmp_path, bad)
    r = run("-m", "indexer", "--config", str(path), "--skip-bad-rows", "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no valid products" in r.stderr
    rejects = [json.loads(x) for x in (tmp_path / "idx.rejected.jsonl").read_text().splitlines()]
    assert len(rejects) == 2 and all(x["reason"] for x in rejects)


def test_a_wrong_id_column_names_the_mapped_column(tmp_path):
    f = jsonl(tmp_path / "new.jsonl", [{"id": "1", "title": "蓝牙 音箱"}])
    with pytest.raises(CatalogError) as e:
        read_catalog(f, {"id": "pid"})
    assert "id (column 'pid')" in str(e.value) and "no field 'pid'" in str(e.value)


def test_list_and_dict_ids_are_rejected_not_stringified(tmp_path):
    f = jsonl(
        tmp_path / "c.jsonl", [{"id": ["a"], "title": "x"}, {"id": {"a": 1}, "title": "y"}, {"id": 7, "title": "z"}]
    )
    cat = read_catalog(f, skip_bad_rows=True)
    assert cat.ids == ["7"] and len(cat.rejected) == 2


def test_a_config_value_of_the_wrong_type_is_a_config_error(demo_dir, tmp_path):
    path = write_config(tmp_path, demo_dir / "catalog.jsonl", bm25={"k1": "abc"})
    with pytest.raises(ConfigError, match=r"bm25\.k1: expected float, got str 'abc'"):
        load_config(path)
    r = run("-m", "engine", "--config", str(path), "耳机")
    assert r.returncode == 2 and "bm25.k1" in r.stderr and "Traceback" not in r.stderr
    for bad, field in (
        ({"search": {"stages": "bm25"}}, "search.stages"),
        ({"rerank": {"depth": 2.5}}, "rerank.depth"),
        ({"personal": {"gains": {"click": "x"}}}, "personal.gains"),
    ):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_config(write_config(tmp_path, demo_dir / "catalog.jsonl", **bad))
    with pytest.raises(ConfigError, match="crossencoder.init must be base or bi-encoder"):
        load_config(write_config(tmp_path, demo_dir / "catalog.jsonl", finetune={"crossencoder": {"init": "bert"}}))
    with pytest.raises(ConfigError, match=r"finetune\.ranker\.cv_folds must be 0 \(off\) or >= 2, not 1"):
        load_config(write_config(tmp_path, demo_dir / "catalog.jsonl", finetune={"ranker": {"cv_folds": 1}}))
    # YAML 1.1 reads 5e-4 (no dot) as a string: a float field takes the number it spells
    cfg = load_config(write_config(tmp_path, demo_dir / "catalog.jsonl", bm25={"k1": "5e-1"}))
    assert cfg.bm25.k1 == 0.5


def test_engine_cli_k_zero_and_a_missing_catalog_say_what_is_wrong(bm25_cfg, tmp_path):
    r = run("-m", "engine", "--config", str(bm25_cfg), "-k", "0", "耳机")
    assert r.returncode == 2 and "k: must be within 1..1000, got 0" in r.stderr and "Traceback" not in r.stderr
    moved = write_config(tmp_path, tmp_path / "gone.jsonl")
    # the built index serves without its catalog file (the fingerprint is the catalog's content, not its path);
    # a rebuild check names the missing file
    r = run("-m", "engine", "--config", str(moved), "耳机")
    assert r.returncode == 0, r.stderr
    r = run("-m", "indexer", "--config", str(moved), "--if-stale")
    assert r.returncode == 2 and "gone.jsonl" in r.stderr and "catalog.path" in r.stderr and "Traceback" not in r.stderr


def test_a_corrupt_deleted_list_is_a_clear_error(bm25_cfg):
    cfg = load_config(bm25_cfg)
    (cfg.index_dir / "deleted.txt").write_bytes(b"P1\n\xff\xfe\n")
    with pytest.raises(IndexLoadError, match="deleted.txt: not UTF-8"):
        SearchEngine.from_config(cfg)


def test_a_killed_build_leaves_no_partial_folder_behind(bm25_cfg):
    cfg = load_config(bm25_cfg)
    partial = cfg.index_dir / "bm25@20260101T000000-dead00"
    partial.mkdir()
    (partial / "half-written.npy").write_bytes(b"\0" * 10)
    serving = (cfg.index_dir / "bm25").resolve()
    build_indexes(cfg, progress=False)
    assert not partial.exists() and not serving.exists()  # the old version is replaced, the partial one removed
    assert sorted(p.name.split("@")[0] for p in cfg.index_dir.glob("bm25@*")) == ["bm25"]


def test_adds_and_deletes_from_two_processes_at_once_lose_nothing(bm25_cfg, tmp_path):
    cfg = load_config(bm25_cfg)
    files = [
        jsonl(tmp_path / f"add{i}.jsonl", [{"id": f"A{i}-{j}", "title": f"新品 {i} 号 {j} 款 音箱"} for j in range(5)])
        for i in range(2)
    ]
    victims = SearchEngine.from_config(cfg, load_models=False).products.ids.tolist()[:6]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "indexer", "--config", str(bm25_cfg), "--add", str(f), "--no-progress"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for f in files
    ]
    procs += [
        subprocess.Popen(
            [sys.executable, "-m", "indexer", "--config", str(bm25_cfg), "--delete", *victims[i::2]],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    for p in procs:
        assert p.wait(300) == 0, p.stderr.read()
    eng = SearchEngine.from_config(cfg)
    ids = set(eng.products.ids.tolist())
    assert {f"A{i}-{j}" for i in range(2) for j in range(5)} <= ids
    from indexer.deleted import deleted_ids

    assert deleted_ids(cfg) == set(victims)
    assert len((cfg.index_dir / "additions.jsonl").read_text().splitlines()) == 10
