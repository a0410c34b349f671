"""`python -m eval.experiments --config configs/demo.yaml [--days 28]`: the online experiment's results so far.

Reads the experiment searches the service logged (impressions with an arm, ``serve.interleave``) and the clicks
sent with their ``search_id`` from the config's event store, and prints what ``GET /experiments`` answers:
for team-draft interleaving the searches the candidate won, lost and tied, the sign test and the decided
searches a test at this win rate needs; for A/B the click rate of each arm and the two-proportion test.
"""

from __future__ import annotations

import json
import sys
import time

from core.cli import command, load, run


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.experiments", __doc__, overrides=True)
    ap.add_argument("--days", type=float, default=28.0, help="the experiment searches of the last DAYS days")
    args = ap.parse_args(argv)

    def body():
        from engine import SearchEngine
        from engine.service.experiments import experiment_report

        cfg = load(args)
        ev = SearchEngine.from_config(cfg).user_events()
        il = cfg.serve.interleave
        out = {"candidate": il.candidate, "mode": il.mode, "share": il.share}
        out.update(experiment_report(ev, time.time() - args.days * 86400.0))
        print(json.dumps(out, indent=1, ensure_ascii=False))
        return 0

    return run(body, errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
