"""Query understanding (engine.understanding, indexer.query_tables) and the robustness set (eval.perturb)."""

import json

import pytest

from engine import SearchEngine
from eval.perturb import KINDS, Perturber, perturb_file
from indexer.build import build_indexes
from indexer.query_tables import TABLES_FILE, QueryTables

from conftest import make_config


@pytest.fixture(scope="module")
def qu_cfg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qu")
    titles = []
    for i in range(12):
        titles += [
            f"华为 mate{i} 5g 手机 黑色",
            f"华为huawei {['平板', '笔记本', '手表'][i % 3]} {i}代",
            f"小米 蓝牙耳机 降噪 款{i}",
            f"索尼 蓝牙耳机 头戴 {i}号",
            f"洗发水 {200 + i}ml 去屑",
            f"牛奶 {250 + i * 10}ml 整箱",
            f"大米 {i + 1}kg 东北",
            f"戴森dyson 吹风机 {i}型",
            f"dyson 吸尘器 v{i}",
            f"samsung galaxy s{i}",
        ]
    rows = [{"id": f"P{i}", "title": t} for i, t in enumerate(titles)]
    cat = tmp / "catalog.jsonl"
    cat.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    cfg = make_config(tmp, cat)
    build_indexes(cfg, progress=False)
    return cfg


@pytest.fixture(scope="module")
def qu_engine(qu_cfg):
    return SearchEngine.from_config(qu_cfg)


def test_make_index_saves_the_tables_with_the_bm25_build(qu_cfg, qu_engine):
    folder = (qu_cfg.index_dir / "bm25").resolve()
    tables = QueryTables.load(folder)
    assert (folder / TABLES_FILE).is_file() and tables is not None
    assert tables.df["蓝牙"] == 24 and tables.units["ml"] > 0 and "毫升" not in tables.units
    assert tables.pinyin["shouji"][0] == "手机" and "机" in tables.homophones["ji"]
    assert tables.aliases.get("huawei") == ["华为"]  # written side by side
    assert "huawei" not in tables.aliases.get("平板", [])


@pytest.mark.parametrize(
    "typed, searched, rule",
    [
        ("250毫升 牛奶", "250ml 牛奶", "units"),
        ("大米 5千克", "大米 5kg", "units"),
        ("shouji", "手机", "pinyin"),
        ("lanyaerji", "蓝牙耳机", "pinyin"),
        ("蓝牙耳鸡", "蓝牙耳机", "typos"),
        ("samsumg galaxy", "samsung galaxy", "typos"),
        ("藍牙耳機", "蓝牙耳机", "normalize"),
        ("ｄｙｓｏｎ 吹风机", "dyson 吹风机", "normalize"),
    ],
)
def test_each_rule_rewrites_what_a_shopper_types_into_what_the_catalog_says(qu_engine, typed, searched, rule):
    rw = qu_engine.understand(typed)
    assert rw.text == searched and rule in [s["rule"] for s in rw.steps]


def test_an_alias_is_used_only_where_the_catalog_rarely_writes_the_typed_form(qu_engine):
    rw = qu_engine.understand("huawei 手机")  # 12 titles say huawei, 24 say 华为: not rare enough
    assert rw.text == "huawei 手机" and not rw.steps
    tables = qu_engine.rewriter().tables
    assert tables.df["huawei"] * 4 >= tables.df["华为"]


@pytest.mark.parametrize(
    "clean",
    [
        "华为 手机",
        "小米 蓝牙耳机",
        "洗发水 200ml",
        "Dyson 吹风机",
        "牛奶",
        "galaxy s3",
        "洗发水 999毫升",  # no title has 999ml: the unit is left as typed
        "mate9m",
    ],
)  # a model name, not 9 metres
def test_a_clean_query_is_searched_as_typed(qu_engine, clean):
    rw = qu_engine.understand(clean)
    assert rw.text == clean and rw.steps == []


def test_query_reports_what_it_searched_and_finds_it(qu_engine, qu_cfg):
    import dataclasses

    res = qu_engine.query("lanyaerji", k=5)
    assert res.searched == "蓝牙耳机" and res.rewrites[0]["rule"] == "pinyin"
    assert all("蓝牙耳机" in h.title for h in res) and len(res) == 5
    d = res.to_dict()
    assert d["searched"] == "蓝牙耳机" and d["rewrites"] == res.rewrites
    off = SearchEngine.from_config(dataclasses.replace(qu_cfg, query=dataclasses.replace(qu_cfg.query, rewrite=False)))
    res_off = off.query("lanyaerji", k=5)
    assert res_off.rewrites == [] and not any("蓝牙耳机" in h.title for h in res_off)
    assert "searched" not in res_off.to_dict()


def test_unknown_rules_are_refused(qu_engine):
    from engine.understanding import QueryRewriter

    with pytest.raises(ValueError, match="unknown query rule"):
        QueryRewriter(qu_engine.rewriter().tables, str.lower, ["normalize", "spelling"])


# -- the robustness set ----------------------------------------------------------------------------------
def test_each_perturbation_kind_makes_the_change_it_names():
    p = Perturber(["蓝牙耳机", "耳鸡", "手机"], seed=0)
    import numpy as np

    rng = np.random.default_rng(0)
    assert p._traditional("蓝牙耳机", rng) == "藍牙耳機"
    assert p._fullwidth("iphone 15", rng) == "ｉｐｈｏｎｅ\u3000１５"
    assert p._pinyin("手机", rng) == "shouji"
    assert p._alias("华为手机", rng) == "huawei手机" and p._alias("Huawei 手机", rng) == "华为 手机"
    assert p._units("牛奶 500ml", rng) == "牛奶 500毫升" and p._units("5千克 大米", rng) == "5kg 大米"
    assert p._typo("耳机", rng) == "耳鸡"  # 鸡 is the file's only other "ji"
    assert p._typo("samsung", rng) != "samsung" and len(p._typo("samsung", rng)) in (6, 7, 8)
    assert p._units("牛奶", rng) is None and p._alias("牛奶", rng) is None


def test_the_perturbed_file_keeps_columns_ids_and_rows_and_is_seeded(tmp_path):
    src = tmp_path / "dev.tsv"
    src.write_text(
        "qid\tquery\tpid\n1\t蓝牙耳机\tP1\n1\t蓝牙耳机\tP2\n2\t华为 手机 500ml\tP3\n3\t123\tP4\n", encoding="utf-8"
    )
    counts = perturb_file(src, tmp_path / "a.tsv", seed=3)
    perturb_file(src, tmp_path / "b.tsv", seed=3)
    a = (tmp_path / "a.tsv").read_text(encoding="utf-8").splitlines()
    assert a == (tmp_path / "b.tsv").read_text(encoding="utf-8").splitlines()  # same seed, same file
    assert a[0] == "qid\tquery\tpid" and [r.split("\t")[0] for r in a[1:]] == ["1", "1", "2", "3"]
    assert [r.split("\t")[2] for r in a[1:]] == ["P1", "P2", "P3", "P4"]
    assert a[1] == a[2].replace("P2", "P1")  # one query, one perturbation
    assert a[1].split("\t")[1] != "蓝牙耳机" and a[3].split("\t")[1] != "华为 手机 500ml"
    assert sum(counts.values()) == 3 and set(counts) <= set(KINDS) | {"none"}
    log = (tmp_path / "a.tsv.log.tsv").read_text(encoding="utf-8").splitlines()
    assert log[0] == "qid\tkind\toriginal\tperturbed" and len(log) == 4
    others = {
        perturb_file(src, tmp_path / f"s{s}.tsv", seed=s) and (tmp_path / f"s{s}.tsv").read_text() for s in range(6)
    }
    assert len(others) > 1  # the seed matters


# -- English measurements (text.english_units: Home Depot) --------------------------------------------------
@pytest.mark.parametrize(
    "typed, want",
    [
        ("1/2 in. x 10 ft. PVC Pipe", ["0.5in", "10ft"]),
        ("1/2 inch pvc pipes", ["0.5in", "pipe"]),
        ('5/8" drywall screws', ["0.625in", "screw"]),
        ("1-1/2 in. Copper Fittings", ["1.5in", "fitting"]),
        ("BEHR DeckOver 1-gal. #SC-141", ["1gal"]),
        ("3 gallon bucket", ["3gal"]),
        ("60 watt light bulbs", ["60w", "bulb"]),
        ("12-Gauge wire", ["12ga"]),
        ("100 sq. ft. roll", ["100sqft"]),
    ],
)
def test_english_measurements_become_one_token_however_they_are_spelled(typed, want):
    from core.config import TextConfig
    from indexer.text import Tokenizer

    tokens = Tokenizer(TextConfig(english_units=True)).tokenize(typed)
    assert all(w in tokens for w in want), tokens
    plain = Tokenizer(TextConfig()).tokenize(typed)
    assert not all(w in plain for w in want)  # off by default: Chinese catalogs tokenize as before


def test_a_setting_added_later_leaves_existing_index_fingerprints_alone(tmp_path):
    import dataclasses

    cat = tmp_path / "c.jsonl"
    cat.write_text('{"id": "1", "title": "x"}\n', encoding="utf-8")
    cfg = make_config(tmp_path, cat)
    on = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, english_units=True))
    assert cfg.index_fingerprint() != on.index_fingerprint()
    payload_keys = json.dumps(dataclasses.asdict(cfg.text), default=str)
    assert "english_units" in payload_keys  # the field exists, yet the default does not enter the hash
    legacy = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, join_units=False))
    assert legacy.index_fingerprint() != cfg.index_fingerprint()
