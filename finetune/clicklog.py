"""The click-log format that training and personalization read.

One event per row, JSONL or TSV (header row), with fields:

- ``user_id``: who searched (any string)
- ``query``: the query text as typed
- ``product_id``: the product the event is about (a catalog id)
- ``event``: ``impression`` | ``click`` | ``add_to_cart`` | ``purchase``
- ``timestamp``: Unix seconds (int or float) or ISO 8601 (``2026-03-01T12:00:00+08:00``;
  without an offset it is read as UTC)

Rows are validated like catalog rows: a bad row is an error naming the file,
the line and the field.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

EVENTS = ("impression", "click", "add_to_cart", "purchase")
FIELDS = ("user_id", "query", "product_id", "event", "timestamp")


class ClickLogError(ValueError):
    pass


@dataclass(frozen=True)
class Event:
    user_id: str
    query: str
    product_id: str
    event: str
    timestamp: float  # Unix seconds, UTC


def parse_timestamp(value) -> float:
    if isinstance(value, bool):
        raise ValueError("not a timestamp")
    if isinstance(value, (int, float)):
        return float(value)
    s = str(value).strip()
    try:
        return float(s)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not Unix seconds or ISO 8601: {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _validate(rec: dict, where: str) -> Event:
    for f in FIELDS:
        v = rec.get(f)
        if v is None or (isinstance(v, str) and not v.strip()):
            raise ClickLogError(f"{where}: field '{f}': missing or empty")
    event = str(rec["event"]).strip()
    if event not in EVENTS:
        raise ClickLogError(f"{where}: field 'event': {event!r} is not one of {', '.join(EVENTS)}")
    try:
        ts = parse_timestamp(rec["timestamp"])
    except ValueError as e:
        raise ClickLogError(f"{where}: field 'timestamp': {e}") from None
    return Event(str(rec["user_id"]).strip(), str(rec["query"]).strip(), str(rec["product_id"]).strip(), event, ts)


def read_clicklog(path: str | Path) -> list[Event]:
    """Read and validate a click log (JSONL by ``.jsonl``/``.json``, else TSV)."""
    path = Path(path)
    if not path.is_file():
        raise ClickLogError(f"click log not found: {path}")
    events: list[Event] = []
    with open(path, "rb") as fb:
        raw_lines = fb.read().split(b"\n")
    lines = []
    for i, raw in enumerate(raw_lines, start=1):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            raise ClickLogError(f"{path}:{i}: undecodable bytes (not UTF-8) at byte {e.start}") from None
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ClickLogError(f"{path}:{i}: invalid JSON: {e.msg}") from None
            if not isinstance(rec, dict):
                raise ClickLogError(f"{path}:{i}: a row must be a JSON object")
            events.append(_validate(rec, f"{path}:{i}"))
        return events
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if not header:
        raise ClickLogError(f"{path}: empty file (a header row is required)")
    missing = [f for f in FIELDS if f not in header]
    if missing:
        raise ClickLogError(f"{path}:1: header lacks column(s) {missing}")
    for row in reader:
        i = reader.line_num
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ClickLogError(f"{path}:{i}: expected {len(header)} fields, found {len(row)}")
        events.append(_validate(dict(zip(header, row)), f"{path}:{i}"))
    return events


def write_clicklog(events: Iterable[Event], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            for e in events:
                f.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")
        else:
            f.write("\t".join(FIELDS) + "\n")
            for e in events:
                f.write(f"{e.user_id}\t{e.query}\t{e.product_id}\t{e.event}\t{e.timestamp:.0f}\n")
