"""Checking what a caller asks for before any stage runs: the query text, k/offset and the filters.

Every problem is a :class:`engine.types.QueryError` naming the parameter, so the Python API and the HTTP
service report the same thing (the service turns it into a 422 with that parameter's name).

The query text: control and format characters (C0/C1 controls, zero-width and bidi marks, BOM) are
stripped, runs of whitespace become one space, and text longer than ``search.max_query_chars`` is cut there
(the result says ``truncated``).  A query with no letter, digit or CJK character left (empty, whitespace,
only emoji or punctuation) has nothing any stage can match: every stage returns no hits for it, with a reason.
"""

from __future__ import annotations

import math
import numbers
import re
import unicodedata

from engine.types import QueryError

FILTERS = ("category", "brand", "price_min", "price_max")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACE = re.compile(r"\s+")
NOTHING_TO_SEARCH = "the query has no letters, digits or CJK characters to search for"


def clean_text(text, max_chars: int) -> tuple[str, bool]:
    """The query as searched: controls stripped, whitespace collapsed, at most ``max_chars`` characters;
    and whether it was cut."""
    if not isinstance(text, str):
        raise QueryError("q", f"must be a string, not {type(text).__name__}")
    text = _SPACE.sub(" ", _CONTROL.sub("", text)).strip()
    if len(text) > max_chars:
        return text[:max_chars].rstrip(), True
    return text, False


def searchable(text: str) -> bool:
    """Whether the text has anything a stage can match: a letter, a digit or a CJK character."""
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def check_int(value, param: str, lo: int, hi: int) -> int:
    """An integer within [lo, hi]; bools, floats with a fraction and strings are refused by name."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise QueryError(param, f"must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise QueryError(param, f"must be within {lo}..{hi}, got {value}")
    return value


def check_personalize(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise QueryError("personalize", f"must be a number within [0, 1], got {value!r}")
    return float(value)


def _facet(value, param: str):
    if isinstance(value, str):
        if not value.strip():
            raise QueryError(param, "must not be empty")
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v.strip() for v in value):
        return list(value)
    raise QueryError(param, f"must be a string or a non-empty list of strings, got {type(value).__name__} {value!r}")


def _price(value, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise QueryError(param, f"must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise QueryError(param, f"must be a finite number, got {value}")
    return value


def check_filters(filters) -> dict | None:
    """``{"category": str | [str], "brand": ..., "price_min": number, "price_max": number}`` checked and
    normalised; None/empty: no filter."""
    if filters is None:
        return None
    if not isinstance(filters, dict):
        raise QueryError(
            "filters", f"must be a dict such as {{'category': '耳机'}}, got {type(filters).__name__} {filters!r}"
        )
    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        raise QueryError(str(unknown[0]), f"unknown filter; use {', '.join(FILTERS)}")
    out = {}
    for key, value in filters.items():
        if value is None:
            continue
        out[key] = _facet(value, key) if key in ("category", "brand") else _price(value, key)
    if "price_min" in out and "price_max" in out and out["price_min"] > out["price_max"]:
        raise QueryError("price_min", f"{out['price_min']} is above price_max {out['price_max']}")
    return out or None
