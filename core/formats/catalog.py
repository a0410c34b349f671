"""Reading a product catalog (JSONL, CSV or TSV) into validated columns.

Required fields: an id and a title; optional: category, brand, price,
attributes.  Column names are mapped by the config (``columns: {id: pid}``).

Every row is validated.  A bad row (missing or empty id/title, duplicate id,
bad price or attributes, wrong number of fields, undecodable bytes) is an
error naming the file, the line and the field; with ``skip_bad_rows`` it is
written with its reason to a side file instead, so nothing vanishes silently.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from core.types import EcomsearchError, id_problem

FIELDS = ("id", "title", "category", "brand", "price", "attributes")
MAX_ERRORS_SHOWN = 10
# a CSV/TSV field may be this long (Python's csv module stops at 131,072 characters by default); a longer one
# is a row error, not a crash
MAX_FIELD_CHARS = 1 << 20
MAX_TITLE_CHARS = 2000  # a longer title is rejected (a pasted description, a broken export)
MAX_LABEL_CHARS = 200  # a category or brand name


@dataclass
class RowError:
    file: str
    line: int
    field: str | None
    reason: str
    raw: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: field '{self.field}': {self.reason}" if self.field else f"{where}: {self.reason}"


class CatalogError(EcomsearchError, ValueError):
    """A catalog could not be read; ``errors`` lists every bad row found."""

    def __init__(self, message: str, errors: list[RowError] | None = None):
        super().__init__(message)
        self.errors = errors or []


@dataclass
class Catalog:
    """Products as columns (row i of each column is product i)."""

    ids: list[str]
    titles: list[str]
    categories: list[str | None]
    brands: list[str | None]
    prices: np.ndarray  # float64, NaN where missing
    attributes: list[dict[str, str] | None]
    source: Path | None = None
    rejected: list[RowError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def index_text(self, i: int) -> str:
        """The text the keyword stage indexes: title, plus brand and category where the title lacks them."""
        parts = [self.titles[i]]
        low = self.titles[i].lower()
        for extra in (self.brands[i], self.categories[i]):
            if extra and extra.lower() not in low:
                parts.append(extra)
        return " ".join(parts)

    def index_texts(self) -> list[str]:
        return [self.index_text(i) for i in range(len(self))]


def detect_format(path: Path, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".tab", ".txt"):
        return "tsv"
    raise CatalogError(f"{path}: cannot tell the format from the extension {suffix!r}; set catalog.format")


def _decoded_lines(path: Path, errors: list[RowError]) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line; undecodable lines become errors."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                errors.append(
                    RowError(
                        str(path),
                        lineno,
                        None,
                        f"undecodable bytes (not UTF-8) at byte {e.start} of the line",
                        raw.decode("utf-8", errors="replace").rstrip("\r\n"),
                    )
                )
                continue
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield lineno, text


def _records(path: Path, fmt: str, errors: list[RowError]) -> Iterator[tuple[int, dict, str]]:
    """(line, record as {column: value}, raw text) for each data row."""
    if fmt == "jsonl":
        for lineno, text in _decoded_lines(path, errors):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                errors.append(
                    RowError(str(path), lineno, None, f"invalid JSON: {e.msg} at column {e.colno}", text.rstrip())
                )
                continue
            if not isinstance(rec, dict):
                errors.append(RowError(str(path), lineno, None, "a JSONL row must be a JSON object", text.rstrip()))
                continue
            yield lineno, rec, text.rstrip("\r\n")
        return

    delimiter = "," if fmt == "csv" else "\t"
    quoting = csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE
    lines = _decoded_lines(path, errors)
    linenos: list[int] = []

    def text_only() -> Iterator[str]:
        for lineno, text in lines:
            linenos.append(lineno)
            yield text

    if csv.field_size_limit() < MAX_FIELD_CHARS:
        csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.reader(text_only(), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader)
    except StopIteration:
        if errors and errors[0].line == 1:
            raise CatalogError(
                f"{path}:1: the header row is not valid UTF-8 ({errors[0].reason}); save the file as UTF-8", errors
            ) from None
        raise CatalogError(f"{path}: the file is empty (a header row is required)") from None
    except csv.Error as e:
        raise CatalogError(f"{path}:1: unreadable header row: {e}") from None
    if linenos and linenos[0] != 1:  # line 1 was not UTF-8 and was skipped: a data row would pose as the header
        raise CatalogError(
            f"{path}:1: the header row is not valid UTF-8 ({errors[0].reason}); save the file as UTF-8", errors
        )
    header = [h.strip() for h in header]
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # e.g. a field over the size limit: that row is bad, the file goes on
            errors.append(
                RowError(
                    str(path),
                    linenos[-1],
                    None,
                    f"unreadable row: {e} (at most {MAX_FIELD_CHARS:,} characters per field)",
                    "",
                )
            )
            continue
        lineno = linenos[-1]
        raw = delimiter.join(row)
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            errors.append(
                RowError(
                    str(path),
                    lineno,
                    None,
                    f"expected {len(header)} fields ({', '.join(header)}), found {len(row)}",
                    raw,
                )
            )
            continue
        yield lineno, dict(zip(header, row)), raw


def _parse_attributes(value) -> dict[str, str] | None:
    """A JSON object, or ``key:value`` pairs separated by ``;`` or ``|``."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if not isinstance(value, str):
        raise ValueError(f"must be an object or a string, not {type(value).__name__}")
    s = value.strip()
    if s.startswith("{"):
        obj = json.loads(s)
        if not isinstance(obj, dict):
            raise ValueError("JSON value is not an object")
        return {str(k): str(v) for k, v in obj.items()}
    out: dict[str, str] = {}
    for pair in s.replace("|", ";").split(";"):
        if not pair.strip():
            continue
        key, sep, val = pair.partition(":")
        if not sep:
            raise ValueError(f"expected key:value pairs separated by ';', got {pair.strip()!r}")
        out[key.strip()] = val.strip()
    return out


def _parse_price(value) -> float:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return math.nan
    if isinstance(value, bool):
        raise ValueError("not a number")
    try:
        price = float(value.strip().lstrip("¥￥$") if isinstance(value, str) else value)
    except OverflowError:  # an integer of hundreds of digits
        raise ValueError(f"must be a finite number >= 0, got an integer of {value.bit_length()} bits") from None
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {value!r}") from None
    if not math.isfinite(price) or price < 0:
        raise ValueError(f"must be a finite number >= 0, got {value!r}")
    return price


def read_catalog(
    path: str | Path, columns: dict[str, str] | None = None, fmt: str = "auto", skip_bad_rows: bool = False
) -> Catalog:
    """Read and validate a catalog.

    Raises :class:`CatalogError` listing the bad rows unless ``skip_bad_rows``;
    then they are returned in ``Catalog.rejected`` (see :func:`write_rejects`).
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalog file not found: {path}")
    fmt = detect_format(path, fmt)
    errors: list[RowError] = []
    return _validated(
        _records(path, fmt, errors),
        errors,
        str(path),
        path,
        columns,
        check_header=fmt != "jsonl",
        skip_bad_rows=skip_bad_rows,
    )


def catalog_from_rows(rows: list, where: str = "products") -> Catalog:
    """Validate catalog rows that arrive as JSON objects (``POST /products``): the rules of a catalog file,
    and stricter: a field this format does not know (``colour``) is an error, not silently dropped.  Errors
    name ``<where>:<n>`` with ``n`` the 1-based position of the row."""
    errors: list[RowError] = []

    def records():
        for n, rec in enumerate(rows, start=1):
            if not isinstance(rec, dict):
                errors.append(RowError(where, n, None, "a product must be a JSON object"))
                continue
            unknown = [k for k in rec if k not in FIELDS]
            if unknown:
                errors.append(RowError(where, n, str(unknown[0]), f"unknown field; a product has {', '.join(FIELDS)}"))
                continue
            yield n, rec, ""

    return _validated(records(), errors, where, None, None, check_header=False, skip_bad_rows=False)


def _validated(
    records,
    errors: list[RowError],
    where: str,
    source: Path | None,
    columns: dict[str, str] | None,
    check_header: bool,
    skip_bad_rows: bool,
) -> Catalog:
    """The catalog of ``records`` (line, {column: value}, raw text), every row checked; bad rows are errors
    (raised together) or, with ``skip_bad_rows``, rejects kept in ``Catalog.rejected``."""
    colmap = {f: f for f in FIELDS}
    colmap.update(columns or {})
    ids: list[str] = []
    titles: list[str] = []
    cats: list[str | None] = []
    brands: list[str | None] = []
    prices: list[float] = []
    attrs: list[dict | None] = []
    seen: dict[str, int] = {}
    header_checked = not check_header

    def named(f: str) -> str:  # a field as the file spells it: "id (column 'pid')" when mapped
        return f if colmap[f] == f else f"{f} (column {colmap[f]!r})"

    for lineno, rec, raw in records:
        if not header_checked:
            missing = [f"{f} (column {colmap[f]!r})" for f in ("id", "title") if colmap[f] not in rec]
            if missing:
                raise CatalogError(
                    f"{where}:1: header lacks required field(s) {', '.join(missing)}; "
                    f"columns are {list(rec)}; map them with catalog.columns in the config"
                )
        header_checked = True

        def bad(fieldname: str, reason: str) -> None:
            errors.append(RowError(where, lineno, named(fieldname), reason, raw))

        pid = rec.get(colmap["id"])
        if isinstance(pid, bool) or not isinstance(pid, (str, int, type(None))):
            bad("id", f"must be a string or an integer, not {type(pid).__name__}")
            continue
        pid = "" if pid is None else str(pid).strip()
        if not pid:
            bad(
                "id",
                "missing or empty"
                if colmap["id"] in rec
                else f"no field {colmap['id']!r} in the row (it has {', '.join(map(repr, list(rec)[:8]))})",
            )
            continue
        problem = id_problem(pid)
        if problem:
            bad("id", problem)
            continue
        title = rec.get(colmap["title"])
        if not isinstance(title, str) or not title.strip():
            bad(
                "title",
                "missing or empty"
                if title in (None, "") or isinstance(title, str)
                else f"must be a string, not {type(title).__name__}",
            )
            continue
        if len(title) > MAX_TITLE_CHARS:
            bad("title", f"{len(title):,} characters, more than {MAX_TITLE_CHARS:,}")
            continue
        if pid in seen:
            bad("id", f"duplicate id {pid!r} (first on line {seen[pid]})")
            continue
        try:
            price = _parse_price(rec.get(colmap["price"]))
        except ValueError as e:
            bad("price", str(e))
            continue
        try:
            attributes = _parse_attributes(rec.get(colmap["attributes"]))
        except (ValueError, json.JSONDecodeError) as e:
            bad("attributes", str(e))
            continue
        facets = {}
        for name in ("category", "brand"):
            try:
                facets[name] = _parse_label(rec.get(colmap[name]))
            except ValueError as e:
                bad(name, str(e))
                break
        if len(facets) < 2:
            continue
        seen[pid] = lineno
        ids.append(pid)
        titles.append(title.strip())
        cats.append(facets["category"])
        brands.append(facets["brand"])
        prices.append(price)
        attrs.append(attributes)

    errors.sort(key=lambda e: e.line)
    if errors and not skip_bad_rows:
        shown = "\n  ".join(str(e) for e in errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise CatalogError(
            f"{where}: {len(errors)} bad row(s); fix them or use --skip-bad-rows "
            f"to write them to a side file:\n  {shown}{more}",
            errors,
        )
    if not ids:
        raise CatalogError(f"{where}: no valid products", errors)
    return Catalog(ids, titles, cats, brands, np.asarray(prices, dtype=np.float64), attrs, source, errors)


def _parse_label(value) -> str | None:
    """A category or brand: a string (or a number, as written); an object, a list or a boolean is an error
    (stored as its Python repr it would become a facet nobody can pick)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a string, not {value!r}")
    text = str(value).strip()
    if len(text) > MAX_LABEL_CHARS:
        raise ValueError(f"{len(text):,} characters, at most {MAX_LABEL_CHARS}")
    return text or None


def write_rejects(errors: list[RowError], path: Path) -> None:
    """Write rejected rows with their reasons, one JSON object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for e in errors:
            f.write(
                json.dumps(
                    {"file": e.file, "line": e.line, "field": e.field, "reason": e.reason, "row": e.raw},
                    ensure_ascii=False,
                )
                + "\n"
            )
