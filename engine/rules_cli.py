"""Merchandising rules from the shell: ``python -m engine.rules_cli list|add|delete --config C``.

- ``list``: the rules in the order they apply, with the version;
- ``add RULE.json|RULE.yaml``: add or replace the rule(s) in the file (one object or a list), each checked —
  a bad one names the wrong field and nothing of the file is stored;
- ``delete ID``: delete a stored rule.

The rules live in ``<index_dir>/rules.json`` beside the index (and the read-only ``serve.rules_file``); a
running service reads a change at its next search.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.cli import command


def main(argv: list[str] | None = None) -> int:
    ap = command("engine.rules_cli", __doc__, False)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, helptext in (("list", "list the rules"), ("add", "add or replace rules"), ("delete", "delete a rule")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", default="configs/demo.yaml")
        if name == "add":
            p.add_argument("path")
        if name == "delete":
            p.add_argument("rule_id")
    args = ap.parse_args(argv)

    from core.config import ConfigError
    from engine.rules import RuleError, parse_rule
    from engine.search import SearchEngine
    from indexer.store import IndexLoadError

    try:
        engine = SearchEngine.from_config(args.config, load_models=False)
        book = engine.rules
        if args.cmd == "list":
            version, rules = book.rules()
            print(json.dumps({"version": version, "rules": [r.to_dict() for r in rules]}, ensure_ascii=False, indent=1))
        elif args.cmd == "add":
            import yaml

            text = Path(args.path).read_text(encoding="utf-8")
            raw = yaml.safe_load(text)
            items = raw if isinstance(raw, list) else [raw]
            rules = []
            for i, r in enumerate(items):
                try:
                    rules.append(parse_rule(r, engine.known_product, book.normalize))
                except RuleError as e:
                    raise RuleError(f"{args.path}: rule {i + 1}: {e.field}", e.message) from None
            for r in rules:
                version = book.put(r)
            print(f"stored {len(rules)} rule(s); rules version {version}")
        else:
            try:
                print(f"deleted {args.rule_id}; rules version {book.delete(args.rule_id)}")
            except KeyError:
                print(f"error: no stored rule {args.rule_id!r}", file=sys.stderr)
                return 2
    except (ConfigError, IndexLoadError, RuleError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
