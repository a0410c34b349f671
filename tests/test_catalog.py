import json

import numpy as np
import pytest

from core.formats.catalog import CatalogError, read_catalog, write_rejects


def write(path, text, mode="w"):
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_with_all_fields(tmp_path):
    p = write(
        tmp_path / "c.jsonl",
        json.dumps(
            {
                "id": 1,
                "title": "华为 手机",
                "brand": "华为",
                "category": "手机",
                "price": "¥1999",
                "attributes": {"颜色": "黑"},
            },
            ensure_ascii=False,
        )
        + "\n",
    )
    cat = read_catalog(p)
    assert cat.ids == ["1"] and cat.brands == ["华为"] and cat.prices[0] == 1999.0
    assert cat.attributes[0] == {"颜色": "黑"}


def test_tsv_and_csv_with_column_mapping(tmp_path):
    tsv = write(tmp_path / "c.tsv", 'pid\ttitle\n7\t红棉吉他 "41寸"\n8\t咖啡\n')
    cat = read_catalog(tsv, columns={"id": "pid"})
    assert cat.ids == ["7", "8"] and cat.titles[0] == '红棉吉他 "41寸"'
    assert np.isnan(cat.prices).all()
    csv = write(tmp_path / "c.csv", 'sku,name,price,attributes\nA,"Drill, 18V",99.5,color:red;size:L\n')
    cat = read_catalog(csv, columns={"id": "sku", "title": "name"})
    assert cat.titles == ["Drill, 18V"] and cat.attributes[0] == {"color": "red", "size": "L"}


@pytest.mark.parametrize(
    "body, line, field",
    [
        ("id\ttitle\n1\tok\n\t空id\n", 3, "id"),
        ("id\ttitle\n1\tok\n2\t \n", 3, "title"),
        ("id\ttitle\n1\tok\n1\t重复\n", 3, "id"),
        ("id\ttitle\tprice\n1\tok\t12\n2\tbad\tabc\n", 3, "price"),
        ("id\ttitle\tprice\n1\tok\t-3\n", 2, "price"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, body, line, field):
    p = write(tmp_path / "bad.tsv", body)
    with pytest.raises(CatalogError) as e:
        read_catalog(p)
    assert f"bad.tsv:{line}: field '{field}'" in str(e.value)
    assert e.value.errors[0].line == line and e.value.errors[0].field == field


def test_undecodable_bytes_and_field_count(tmp_path):
    p = write(tmp_path / "b.tsv", b"id\ttitle\n1\tok\n2\t\xff\xfe bad\n3\ta\textra\n", "wb")
    with pytest.raises(CatalogError) as e:
        read_catalog(p)
    msg = str(e.value)
    assert "b.tsv:3: undecodable bytes" in msg and "b.tsv:4: expected 2 fields" in msg


def test_missing_header_column_is_explained(tmp_path):
    p = write(tmp_path / "h.tsv", "pid\ttitle\n1\tx\n")
    with pytest.raises(CatalogError, match="catalog.columns"):
        read_catalog(p)


def test_skip_bad_rows_keeps_every_row_accounted_for(tmp_path):
    p = write(
        tmp_path / "m.jsonl",
        '{"id": "a", "title": "好"}\n{"id": "", "title": "x"}\nnot json\n'
        '{"id": "a", "title": "dup"}\n{"id": "b", "title": "也好", "price": "x"}\n',
    )
    cat = read_catalog(p, skip_bad_rows=True)
    assert cat.ids == ["a"]
    assert [(r.line, r.field) for r in cat.rejected] == [(2, "id"), (3, None), (4, "id"), (5, "price")]
    side = tmp_path / "rejects.jsonl"
    write_rejects(cat.rejected, side)
    rows = [json.loads(l) for l in side.read_text(encoding="utf-8").splitlines()]
    assert len(cat) + len(rows) == 5
    assert rows[0]["reason"] and rows[2]["row"] == '{"id": "a", "title": "dup"}'
