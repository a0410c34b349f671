"""eval.query_ids: the before/after check of a structure change (same ids in the same order)."""

import json

from eval.query_ids import diff, dump, main

from conftest import tiny_dense_config


def test_a_dump_is_stable_and_diff_names_what_changed(demo_dir, tiny_model, tmp_path):
    cfg = tiny_dense_config(tmp_path, demo_dir, tiny_model)
    from core.config import write_config

    config = write_config(cfg, tmp_path / "c.yaml")
    a = dump(str(config), str(demo_dir / "queries.tsv"), n=20, k=5)
    assert len(a) == 20 and all(len(ids) == 5 for ids in a.values())
    assert diff(a, dump(str(config), str(demo_dir / "queries.tsv"), n=20, k=5)) == []
    q = next(iter(a))
    b = {**a, q: list(reversed(a[q]))}  # one query's order changed
    assert diff(a, b) == [q]
    (tmp_path / "a.json").write_text(json.dumps(a, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps(b, ensure_ascii=False), encoding="utf-8")
    assert main(["diff", str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 0
    assert main(["diff", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 1
