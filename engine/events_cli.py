"""The event store from the shell: ``python -m engine.events_cli ingest|forget|purge --config C``.

- ``ingest clicks.jsonl [--skip-bad-rows] [--rejects F]``: load a click log (:mod:`core.formats.clicklog`) into
  the store, every row validated; bad rows (with their line numbers) stop the load or, with ``--skip-bad-rows``,
  are listed and the good rows stored.
- ``forget USER_ID``: delete every event of a user, their profile and their share of the product counts.
- ``purge``: drop events older than ``personal.retention_days`` (and their counts).

A module of its own above :mod:`engine.events` and :mod:`engine.search` (it opens an engine for the product
table), so that neither of those imports the other's caller.
"""

from __future__ import annotations

import json
import sys

from core.formats.clicklog import ClickLogError
from engine.events import EventError, PrivacyError
from core.cli import command


def main(argv: list[str] | None = None) -> int:
    ap = command("engine.events_cli", __doc__, False)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ing = sub.add_parser("ingest", help="load a click log (JSONL or TSV) into the event store")
    ing.add_argument("path")
    ing.add_argument("--config", default="configs/demo.yaml")
    ing.add_argument("--skip-bad-rows", action="store_true", help="store the good rows, list the bad with reasons")
    ing.add_argument("--rejects", help="write rejected rows with reasons to this JSONL file")
    fg = sub.add_parser("forget", help="delete every event and the profile of a user")
    fg.add_argument("user_id")
    fg.add_argument("--config", default="configs/demo.yaml")
    pg = sub.add_parser("purge", help="drop events older than personal.retention_days")
    pg.add_argument("--config", default="configs/demo.yaml")
    args = ap.parse_args(argv)

    from engine.search import SearchEngine
    from core.config import ConfigError
    from indexer.encoder import ModelMissingError
    from indexer.store import IndexLoadError

    try:
        engine = SearchEngine.from_config(args.config, load_models=False)
        events = engine.user_events()
        if args.cmd == "ingest":
            rep = events.ingest(args.path, skip_bad_rows=args.skip_bad_rows)
            for line, reason in rep.rejected[:20]:
                print(f"rejected: {reason}", file=sys.stderr)
            if len(rep.rejected) > 20:
                print(f"... and {len(rep.rejected) - 20} more rejected rows", file=sys.stderr)
            if args.rejects and rep.rejected:
                with open(args.rejects, "w", encoding="utf-8") as f:
                    for line, reason in rep.rejected:
                        f.write(json.dumps({"line": line, "reason": reason}, ensure_ascii=False) + "\n")
            print(rep.summary())
        elif args.cmd == "forget":
            n = engine.forget_user(args.user_id)  # also into the ledger of forgotten users (engine.forgotten)
            print(f"forgot {n} events and the profile")
        else:
            print(f"dropped {events.purge()} events past the retention")
    except (ConfigError, IndexLoadError, ModelMissingError, EventError, PrivacyError, ClickLogError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
