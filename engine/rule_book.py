"""The rule book: merchandising rules kept in ``<index_dir>/rules.json`` and the read-only ``serve.rules_file``,
re-read when either changes; which rules fire on a search (:mod:`engine.rules` has the rule form)."""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from pathlib import Path

from engine.rules import RULES_FILE, Rule, RuleError, parse_rule


class RuleBook:
    """The rules of an index folder (``rules.json``) and of the YAML file, re-read when either changes."""

    def __init__(self, folder: Path, yaml_file: Path | None = None, normalize=lambda s: s.lower()):
        self.path = Path(folder) / RULES_FILE
        self.yaml_file = Path(yaml_file) if yaml_file else None
        self.normalize = normalize
        self._lock = threading.Lock()
        self._seen: tuple = ()
        self._rules: list[Rule] = []
        self._version = 0

    def _stamp(self) -> tuple:
        out = []
        for p in (self.path, self.yaml_file):
            try:
                st = p.stat() if p is not None else None
                out.append((st.st_mtime_ns, st.st_size) if st else None)
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def _read_store(self) -> tuple[int, list[dict]]:
        if not self.path.is_file():
            return 0, []
        data = json.loads(self.path.read_text(encoding="utf-8"))
        return int(data.get("version", 0)), list(data.get("rules", []))

    def rules(self) -> tuple[int, list[Rule]]:
        """(version, every rule), sorted in the order they apply."""
        stamp = self._stamp()
        if stamp != self._seen:
            with self._lock:
                version, raw = self._read_store()
                rules = [parse_rule(r, normalize=self.normalize) for r in raw]
                if self.yaml_file is not None and self.yaml_file.is_file():
                    import yaml

                    data = yaml.safe_load(self.yaml_file.read_text(encoding="utf-8")) or {}
                    items = data.get("rules", []) if isinstance(data, dict) else data
                    for i, r in enumerate(items or []):
                        try:
                            rules.append(parse_rule(r, normalize=self.normalize, source=str(self.yaml_file)))
                        except RuleError as e:
                            raise RuleError(f"{self.yaml_file}: rules[{i}].{e.field}", e.message) from None
                    import zlib

                    version = version * 1000 + zlib.crc32(self.yaml_file.read_bytes()) % 1000  # its edits count
                rules.sort(key=lambda r: (-r.priority, r.created, r.id))
                self._rules, self._version, self._seen = rules, version, stamp
        return self._version, list(self._rules)

    @property
    def version(self) -> int:
        """The version of the rules last read (:meth:`rules`, :meth:`firing`)."""
        return self._version

    def put(self, rule: Rule) -> int:
        """Add or replace a stored rule; the new version."""
        if any(r.id == rule.id and r.source != "store" for r in self.rules()[1]):
            raise RuleError("id", f"{rule.id!r} is a rule of the YAML file {self.yaml_file}: change it there")
        return self._write(lambda rules: [r for r in rules if r["id"] != rule.id] + [rule.to_dict()])

    def delete(self, rule_id: str) -> int:
        """Delete a stored rule (KeyError when there is none); the new version."""
        _, raw = self._read_store()
        if not any(r["id"] == rule_id for r in raw):
            raise KeyError(rule_id)
        return self._write(lambda rules: [r for r in rules if r["id"] != rule_id])

    def _write(self, change) -> int:
        with self._lock:
            version, raw = self._read_store()
            rules = change(raw)
            for r in rules:
                r["source"] = "store"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".rules-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": version + 1, "rules": rules}, f, ensure_ascii=False, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self._seen = ()
        return version + 1

    def firing(self, text: str, filters: dict | None, now: float | None = None) -> list[Rule]:
        """The enabled rules whose condition this search meets, in the order they apply."""
        now = time.time() if now is None else now
        q = self.normalize(text or "").strip()
        filters = filters or {}
        out = []
        for r in self.rules()[1]:
            c = r.condition
            if not r.enabled or c.get("start", -math.inf) > now or c.get("end", math.inf) <= now:
                continue
            how, want = next(iter(c["query"].items()))
            if (how == "exact" and q != want) or (how == "contains" and want not in q):
                continue
            need = c.get("filters", {})
            if any(not set(v) <= set(_as_list(filters.get(k))) for k, v in need.items()):
                continue
            out.append(r)
        return out

    def hidden_everywhere(self, now: float | None = None) -> set[str]:
        """Products hidden by enabled rules that fire on any search (recommendations, suggestion counts)."""
        return {
            pid
            for r in self.firing("", None, now)
            if r.condition["query"].get("any") and not r.condition.get("filters")
            for pid in r.consequence.get("hide", [])
        }


def _as_list(v) -> list:
    return [] if v is None else ([v] if isinstance(v, str) else list(v))


def rule_book(cfg) -> RuleBook:
    """The rule book of a config: its index folder and ``serve.rules_file``, texts compared as suggestions are."""
    from indexer.suggest import clean

    return RuleBook(cfg.index_dir, cfg.serve.rules_file, lambda t: clean(t, cfg.text.traditional_to_simplified))
