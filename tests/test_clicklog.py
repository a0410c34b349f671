import pytest

from core.formats.clicklog import ClickLogError, Event, read_clicklog, write_clicklog


@pytest.mark.parametrize("name", ["log.jsonl", "log.tsv"])
def test_round_trip(tmp_path, name):
    events = [
        Event("u1", "华为 手机", "P1", "impression", 1767225600.0),
        Event("u1", "华为 手机", "P1", "purchase", 1767225700.0),
    ]
    write_clicklog(events, tmp_path / name)
    assert read_clicklog(tmp_path / name) == events


def test_iso_timestamps_and_errors(tmp_path):
    p = tmp_path / "c.tsv"
    p.write_text(
        "user_id\tquery\tproduct_id\tevent\ttimestamp\nu\tq\tp\tclick\t2026-01-01T00:00:00Z\n", encoding="utf-8"
    )
    assert read_clicklog(p)[0].timestamp == 1767225600.0
    p.write_text(
        "user_id\tquery\tproduct_id\tevent\ttimestamp\nu\tq\tp\tclick\t1\nu\tq\tp\tlike\t2\n", encoding="utf-8"
    )
    with pytest.raises(ClickLogError, match=r"c.tsv:3: field 'event'"):
        read_clicklog(p)
    p.write_text("user_id\tquery\tproduct_id\tevent\ttimestamp\nu\tq\tp\tclick\tyesterday\n", encoding="utf-8")
    with pytest.raises(ClickLogError, match=r"c.tsv:2: field 'timestamp'"):
        read_clicklog(p)
