"""Judged query files: a header row and columns ``query``, ``pid``, optional ``qid`` and ``relevance``."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from core.types import EcomsearchError


class QueriesError(EcomsearchError, ValueError):
    """A judged-queries file that cannot be read (file, line, field)."""


@dataclass
class JudgedQueries:
    texts: dict[str, str]  # qid -> query text
    relevance: dict[str, dict[str, float]]  # qid -> pid -> relevance as judged

    def __len__(self) -> int:
        return len(self.texts)

    def gains(self, offset: float = 0.0) -> dict[str, dict[str, float]]:
        """qrels with gain = relevance + offset (Home Depot: relevance - 1)."""
        return {q: {p: r + offset for p, r in judged.items()} for q, judged in self.relevance.items()}


def read_queries(path: str | Path) -> JudgedQueries:
    path = Path(path)
    if not path.is_file():
        raise QueriesError(f"queries file not found: {path}")
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    texts: dict[str, str] = {}
    rel: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise QueriesError(f"{path}: empty file (a header row is required)") from None
        except UnicodeDecodeError as e:
            raise QueriesError(f"{path}:1: not UTF-8 ({e.reason})") from None
        missing = [c for c in ("query", "pid") if c not in header]
        if missing:
            raise QueriesError(f"{path}:1: header lacks column(s) {missing}; found {header}")
        col = {name: i for i, name in enumerate(header)}
        try:
            for row in reader:
                line = reader.line_num
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise QueriesError(f"{path}:{line}: expected {len(header)} fields, found {len(row)}")
                query, pid = row[col["query"]].strip(), row[col["pid"]].strip()
                if not query:
                    raise QueriesError(f"{path}:{line}: field 'query': empty")
                if not pid:
                    raise QueriesError(f"{path}:{line}: field 'pid': empty")
                qid = row[col["qid"]].strip() if "qid" in col else query
                if "relevance" in col and row[col["relevance"]].strip():
                    try:
                        r = float(row[col["relevance"]])
                    except ValueError:
                        raise QueriesError(
                            f"{path}:{line}: field 'relevance': not a number: {row[col['relevance']]!r}"
                        ) from None
                else:
                    r = 1.0
                if qid in texts and texts[qid] != query:
                    raise QueriesError(f"{path}:{line}: field 'qid': {qid!r} already used for query {texts[qid]!r}")
                texts[qid] = query
                rel.setdefault(qid, {})[pid] = r
        except UnicodeDecodeError as e:
            raise QueriesError(f"{path}: not UTF-8 near line {reader.line_num + 1} ({e.reason})") from None
    return JudgedQueries(texts, rel)
