"""`python -m finetune --config configs/demo.yaml` (what `make finetune` runs).

Trains the bi-encoder and the cross-encoder from the config's `finetune`
section, writes them under models/<config name>/ with a model card each, and
rebuilds the dense index with the new bi-encoder.  `--resume` keeps finished
models trained with the same settings and continues an interrupted training
from its last evaluation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from finetune.job import JOB_STAGES, config_stages, run_job
from core.cli import command, load, run


def main(argv: list[str] | None = None) -> int:
    ap = command("finetune", __doc__, overrides=True)
    ap.add_argument(
        "--stages",
        default=None,
        help=f"comma-separated, from {', '.join(JOB_STAGES)} (default: what the config uses: the bi-encoder "
        "where dense.model is the job's, the cross-encoder and ranker where rerank.model is set)",
    )
    ap.add_argument("--resume", action="store_true", help="keep finished models, continue interrupted training")
    ap.add_argument("--cross-encoder-layers", type=int, help="override finetune.crossencoder.num_layers")
    ap.add_argument("--cross-encoder-out", help="where the cross-encoder goes (default models/<config>/cross-encoder)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    def body():
        cfg = load(args)
        stages = [s for s in args.stages.split(",") if s] if args.stages is not None else config_stages(cfg)
        summary = run_job(
            cfg,
            stages,
            resume=args.resume,
            progress=not args.no_progress,
            cross_encoder_layers=args.cross_encoder_layers,
            cross_encoder_out=Path(args.cross_encoder_out) if args.cross_encoder_out else None,
        )
        print(json.dumps(summary, indent=1, ensure_ascii=False, default=str))
        for note in summary["paused"]:
            print(f"note: {note}", file=sys.stderr)

    return run(body, errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
