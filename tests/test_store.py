import json
import shutil

import pytest

from engine import SearchEngine
from indexer.build import build_indexes, index_is_current
from core.formats.catalog import CatalogError
from indexer.store import IndexLoadError, write_index

from conftest import make_config


def catalog(tmp_path, rows, name="c.tsv"):
    p = tmp_path / name
    p.write_text("id\ttitle\n" + "".join(f"{i}\t{t}\n" for i, t in rows), encoding="utf-8")
    return p


def test_build_load_and_query(tmp_path):
    cfg = make_config(tmp_path, catalog(tmp_path, [("1", "华为 Mate60 手机"), ("2", "蓝月亮 洗衣液 3kg")]))
    build_indexes(cfg, progress=False)
    assert index_is_current(cfg)
    eng = SearchEngine.from_config(cfg)
    hits = eng.query("洗衣液")
    assert [h.product_id for h in hits] == ["2"] and hits[0].title == "蓝月亮 洗衣液 3kg"
    assert (cfg.index_dir / "bm25").is_symlink()


def test_failed_rebuild_leaves_previous_index_serving(tmp_path):
    path = catalog(tmp_path, [("1", "华为 手机"), ("2", "小米 手机")])
    cfg = make_config(tmp_path, path)
    build_indexes(cfg, progress=False)
    before = sorted(p.name for p in cfg.index_dir.iterdir())
    # a bad catalog: the rebuild fails before anything is swapped
    path.write_text("id\ttitle\n1\t华为 手机\n1\t重复\n", encoding="utf-8")
    with pytest.raises(CatalogError):
        build_indexes(cfg, progress=False)

    # a crash in the middle of writing: the half-written folder is removed
    def crash(folder):
        (folder / "partial.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_index(cfg.index_dir / "bm25", crash, "bm25", cfg.index_fingerprint())
    assert sorted(p.name for p in cfg.index_dir.iterdir()) == before
    assert [h.product_id for h in SearchEngine.from_config(cfg).query("小米")] == ["2"]


def test_rebuild_swaps_in_new_version_and_removes_old(tmp_path):
    path = catalog(tmp_path, [("1", "华为 手机")])
    cfg = make_config(tmp_path, path)
    build_indexes(cfg, progress=False)
    old = (cfg.index_dir / "bm25").resolve()
    catalog(tmp_path, [("1", "华为 手机"), ("9", "索尼 耳机")])
    assert not index_is_current(cfg)
    build_indexes(cfg, progress=False)
    assert (cfg.index_dir / "bm25").resolve() != old and not old.exists()
    assert SearchEngine.from_config(cfg).query("耳机")[0].product_id == "9"


def test_corrupt_or_foreign_index_fails_clearly(tmp_path):
    cfg = make_config(tmp_path, catalog(tmp_path, [("1", "华为 手机"), ("2", "小米 手机")]))
    build_indexes(cfg, progress=False)
    folder = (cfg.index_dir / "bm25").resolve()
    manifest = json.loads((folder / "manifest.json").read_text())

    titles = folder / "titles.utf8"
    data = bytearray(titles.read_bytes())
    data[0] ^= 0xFF
    titles.write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match="checksum mismatch"):
        SearchEngine.from_config(cfg)

    manifest["format_version"] = 999
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match="format version 999"):
        SearchEngine.from_config(cfg)

    shutil.rmtree(folder)
    with pytest.raises(IndexLoadError, match="make index"):
        SearchEngine.from_config(cfg)


def test_index_built_with_other_settings_is_refused(tmp_path):
    path = catalog(tmp_path, [("1", "华为 手机")])
    build_indexes(make_config(tmp_path, path), progress=False)
    other = make_config(tmp_path, path, bm25={"k1": 0.9})
    with pytest.raises(IndexLoadError, match="rebuild"):
        SearchEngine.from_config(other)


def test_indexer_cli_strict_and_skip_bad_rows(tmp_path, capsys):
    from indexer.__main__ import main

    (tmp_path / "cat.tsv").write_text(
        "id\ttitle\tprice\n1\t华为手机\t1999\n2\t\t5\n1\t重复\t3\n4\t小米\tabc\n", encoding="utf-8"
    )
    (tmp_path / "c.yaml").write_text("root: .\ncatalog: {path: cat.tsv}\nindex_dir: idx/c\n", encoding="utf-8")
    assert main(["--config", str(tmp_path / "c.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cat.tsv:3: field 'title'" in err and "cat.tsv:5: field 'price'" in err
    assert not (tmp_path / "idx" / "c").exists()
    assert main(["--config", str(tmp_path / "c.yaml"), "--no-progress", "--skip-bad-rows"]) == 0
    rejects = (tmp_path / "idx" / "c.rejected.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(r)["line"] for r in rejects] == [3, 4, 5]
    assert "1 products" in capsys.readouterr().out
