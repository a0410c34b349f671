"""Merchandising rules: a condition on the search, consequences applied after ranking.

A rule (docs/search-page.md):

- ``id``: letters, digits, ``-`` and ``_``; ``description``; ``priority`` (higher applies first; equal: the
  older rule first); ``enabled``;
- ``condition``: ``query`` — ``{"exact": text}``, ``{"contains": text}`` or ``{"any": true}`` (compared after
  normalization: full width, traditional, case) —, ``filters`` the search must include (category / brand
  values), ``start`` / ``end`` (ISO time or epoch seconds) when it is active;
- ``consequence``: ``pin`` [{product, position}], ``hide`` [product ids], ``boost`` [{field: category | brand,
  value, weight}] (a negative weight buries), ``redirect`` (a URL the page goes to instead).

How they apply, in order, to the ranked list (fetched deeper than the page, so hidden products are
backfilled): boosts move a matching hit by ``weight`` standard deviations of the list's scores; hides remove;
pins put a product at its position (1-based over the whole ranking).  Conflicts: **a hide beats a pin**; two pins
for one position: the rule that applies first keeps it, the other product goes to the next free position
below; one product pinned twice: the first rule's position.  A pinned product must pass the search's filters
and never comes back once deleted.  Rules with ``query: any`` and ``hide`` also leave recommendations and the
suggestions' hit counts.  Every change raises ``version``, which answers carry.

Kept in ``<index_dir>/rules.json`` (written whole and renamed into place, so replicas reading the index folder
see one version or the next) and in the read-only YAML file ``serve.rules_file``; the service's ``/rules`` and
``python -m engine.rules`` manage the first.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime


from core.types import EcomsearchError

RULES_FILE = "rules.json"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MATCH = ("exact", "contains", "any")
_BOOST_FIELDS = ("category", "brand")
MAX_PINS = 50


class RuleError(EcomsearchError, ValueError):
    """A rule that cannot be kept; ``field`` names what is wrong (``consequence.pin[0].position``)."""

    def __init__(self, field_: str, message: str):
        super().__init__(f"{field_}: {message}")
        self.field = field_
        self.message = message


def _time(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass
    raise RuleError(where, f"expected an ISO time or epoch seconds, got {value!r}")


@dataclass
class Rule:
    id: str
    condition: dict
    consequence: dict
    priority: int = 0
    enabled: bool = True
    description: str = ""
    created: float = field(default_factory=time.time)
    source: str = "store"  # or the YAML file's path (read-only)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "description": self.description,
            "priority": self.priority,
            "enabled": self.enabled,
            "condition": self.condition,
            "consequence": self.consequence,
            "created": self.created,
            "source": self.source,
        }


def parse_rule(raw, known_product=None, normalize=lambda s: s.lower(), source: str = "store") -> Rule:
    """A checked rule from its JSON/YAML form; :class:`RuleError` names the first wrong field."""
    if not isinstance(raw, dict):
        raise RuleError("rule", f"expected an object, got {type(raw).__name__}")
    unknown = set(raw) - {"id", "description", "priority", "enabled", "condition", "consequence", "created", "source"}
    if unknown:
        raise RuleError(sorted(unknown)[0], "unknown field")
    rid = raw.get("id")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise RuleError("id", f"1-64 letters, digits, - or _, got {rid!r}")
    prio = raw.get("priority", 0)
    if not isinstance(prio, int) or isinstance(prio, bool):
        raise RuleError("priority", f"expected an integer, got {prio!r}")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleError("enabled", f"expected true or false, got {enabled!r}")
    cond = _condition(raw.get("condition"), normalize)
    cons = _consequence(raw.get("consequence"), known_product)
    created = raw.get("created", time.time())
    return Rule(rid, cond, cons, prio, enabled, str(raw.get("description", "")), float(created), source)


def _condition(c, normalize) -> dict:
    if not isinstance(c, dict):
        raise RuleError("condition", "expected an object with query (and optionally filters, start, end)")
    unknown = set(c) - {"query", "filters", "start", "end"}
    if unknown:
        raise RuleError(f"condition.{sorted(unknown)[0]}", "unknown field")
    q = c.get("query")
    if not isinstance(q, dict) or len(q) != 1 or next(iter(q)) not in _MATCH:
        raise RuleError("condition.query", 'expected one of {"exact": text}, {"contains": text}, {"any": true}')
    how, text = next(iter(q.items()))
    if how == "any":
        if text is not True:
            raise RuleError("condition.query.any", "expected true")
        out: dict = {"query": {"any": True}}
    else:
        if not isinstance(text, str) or not normalize(text).strip():
            raise RuleError(f"condition.query.{how}", "expected a non-empty text")
        out = {"query": {how: normalize(text).strip()}}
    filters = c.get("filters") or {}
    if not isinstance(filters, dict) or set(filters) - set(_BOOST_FIELDS):
        raise RuleError("condition.filters", "expected an object of category and/or brand values")
    for name, vals in filters.items():
        vals = [vals] if isinstance(vals, str) else vals
        if not isinstance(vals, list) or not vals or not all(isinstance(v, str) and v for v in vals):
            raise RuleError(f"condition.filters.{name}", "expected a value or a list of values")
        out.setdefault("filters", {})[name] = vals
    start, end = _time(c.get("start"), "condition.start"), _time(c.get("end"), "condition.end")
    if start is not None and end is not None and end <= start:
        raise RuleError("condition.end", "must be after condition.start")
    if start is not None:
        out["start"] = start
    if end is not None:
        out["end"] = end
    return out


def _consequence(c, known_product) -> dict:
    if not isinstance(c, dict) or not c:
        raise RuleError("consequence", "expected an object with pin, hide, boost and/or redirect")
    unknown = set(c) - {"pin", "hide", "boost", "redirect"}
    if unknown:
        raise RuleError(f"consequence.{sorted(unknown)[0]}", "unknown field")
    out: dict = {}
    pins = c.get("pin") or []
    if not isinstance(pins, list) or len(pins) > MAX_PINS:
        raise RuleError("consequence.pin", f"expected a list of at most {MAX_PINS} {{product, position}}")
    for i, p in enumerate(pins):
        where = f"consequence.pin[{i}]"
        if not isinstance(p, dict) or set(p) != {"product", "position"}:
            raise RuleError(where, "expected {product, position}")
        _product(p["product"], f"{where}.product", known_product)
        pos = p["position"]
        if not isinstance(pos, int) or isinstance(pos, bool) or not 1 <= pos <= 1000:
            raise RuleError(f"{where}.position", f"expected an integer from 1 to 1000, got {pos!r}")
    if pins:
        out["pin"] = [{"product": p["product"], "position": p["position"]} for p in pins]
    hides = c.get("hide") or []
    if not isinstance(hides, list):
        raise RuleError("consequence.hide", "expected a list of product ids")
    for i, pid in enumerate(hides):
        _product(pid, f"consequence.hide[{i}]", known_product)
    if hides:
        out["hide"] = list(dict.fromkeys(hides))
    boosts = c.get("boost") or []
    if not isinstance(boosts, list):
        raise RuleError("consequence.boost", "expected a list of {field, value, weight}")
    for i, b in enumerate(boosts):
        where = f"consequence.boost[{i}]"
        if not isinstance(b, dict) or set(b) != {"field", "value", "weight"}:
            raise RuleError(where, "expected {field, value, weight}")
        if b["field"] not in _BOOST_FIELDS:
            raise RuleError(f"{where}.field", f"expected category or brand, got {b['field']!r}")
        if not isinstance(b["value"], str) or not b["value"]:
            raise RuleError(f"{where}.value", "expected a non-empty text")
        w = b["weight"]
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or not -10 <= w <= 10:
            raise RuleError(f"{where}.weight", f"expected a number from -10 to 10, got {w!r}")
    if boosts:
        out["boost"] = [dict(b) for b in boosts]
    url = c.get("redirect")
    if url is not None:
        if not isinstance(url, str) or not re.match(r"^(https?://|/)[^\s<>\"']+$", url):
            raise RuleError("consequence.redirect", f"expected an http(s) URL or a path, got {url!r}")
        out["redirect"] = url
    if not out:
        raise RuleError("consequence", "has nothing to do")
    return out


def _product(pid, where: str, known_product) -> None:
    if not isinstance(pid, str) or not pid:
        raise RuleError(where, f"expected a product id, got {pid!r}")
    if known_product is not None and not known_product(pid):
        raise RuleError(where, f"unknown product {pid!r}")
