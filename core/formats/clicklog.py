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

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from core.types import EcomsearchError

EVENTS = ("impression", "click", "add_to_cart", "purchase")
FIELDS = ("user_id", "query", "product_id", "event", "timestamp")


class ClickLogError(EcomsearchError, ValueError):
    """A click log that cannot be read (file, line, field)."""


@dataclass(frozen=True)
class Event:
    user_id: str
    query: str
    product_id: str
    event: str
    timestamp: float  # Unix seconds, UTC
    # how relevant the search that showed the product found it (its click log-odds), where the engine logged it;
    # not a column of the click-log file
    relevance: float | None = None


def parse_timestamp(value) -> float:
    if isinstance(value, bool):
        raise ValueError("not a timestamp")
    if isinstance(value, int) and value.bit_length() > 64:
        raise ValueError(f"not a time: an integer of {value.bit_length()} bits")
    if isinstance(value, (int, float)):
        return float(value)
    s = str(value).strip()[:100]
    try:
        return float(s)
    except ValueError:
        pass
    except OverflowError:
        raise ValueError(f"not a time: {s[:40]!r}") from None
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


def iter_clicklog(path: str | Path) -> Iterator[tuple[int, Event | ClickLogError]]:
    """``(line, event)`` for each row of a click log, or ``(line, error)`` for a bad row (the error names
    the file, line and field); a missing file, an empty file or a bad header raise at once."""
    path = Path(path)
    if not path.is_file():
        raise ClickLogError(f"click log not found: {path}")
    jsonl = path.suffix.lower() in (".jsonl", ".json", ".ndjson")
    header: list[str] | None = None
    with open(path, "rb") as fb:
        for i, raw in enumerate(fb, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield i, ClickLogError(f"{path}:{i}: undecodable bytes (not UTF-8) at byte {e.start}")
                continue
            if jsonl:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    yield i, ClickLogError(f"{path}:{i}: invalid JSON: {e.msg}")
                    continue
                if not isinstance(rec, dict):
                    yield i, ClickLogError(f"{path}:{i}: a row must be a JSON object")
                    continue
            else:
                row = line.split("\t")
                if header is None:
                    header = row
                    missing = [f for f in FIELDS if f not in header]
                    if missing:
                        raise ClickLogError(f"{path}:1: header lacks column(s) {missing}")
                    continue
                if not any(c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    yield i, ClickLogError(f"{path}:{i}: expected {len(header)} fields, found {len(row)}")
                    continue
                rec = dict(zip(header, row))
            try:
                yield i, _validate(rec, f"{path}:{i}")
            except ClickLogError as e:
                yield i, e
    if not jsonl and header is None:
        raise ClickLogError(f"{path}: empty file (a header row is required)")


def read_clicklog(path: str | Path) -> list[Event]:
    """Read and validate a click log (JSONL by ``.jsonl``/``.json``, else TSV); the first bad row is an error."""
    events: list[Event] = []
    for _, item in iter_clicklog(path):
        if isinstance(item, ClickLogError):
            raise item
        events.append(item)
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
