"""Data-parallel fine-tuning on Ray Train (``finetune.<model>.workers`` > 1).

:func:`train_on_workers` runs one training function in ``workers`` processes that Ray Train's
``TorchTrainer`` starts and joins into a torch process group (gloo on CPUs, NCCL on GPUs, one process per GPU
on a cluster; ``RAY_ADDRESS`` for a cluster, else a local Ray).  The loop (:mod:`finetune.loop`) does the
rest: shares of each batch, averaged gradients, rank 0 saving.  The training function travels to each
process with the model it closes over (so every process starts from the same weights) and trains its copy;
rank 0's report comes back.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def _worker(config: dict) -> None:
    import torch

    from finetune import loop

    rank, _ = loop.world()
    torch.set_num_threads(max(1, int(config["threads"])))
    report = config["train"]()
    if rank == 0:
        Path(config["report"]).write_text(json.dumps(report, default=str), encoding="utf-8")


def train_on_workers(train: Callable[[], dict], workers: int, use_gpu: bool = False) -> dict:
    """``train()`` (builds its model, trains it through :func:`finetune.loop.run`, returns the loop's report)
    in ``workers`` data-parallel processes; rank 0's report."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from indexer.distributed import start_ray

    start_ray(None)
    threads = max(1, (os.cpu_count() or 1) // workers) if not use_gpu else 1
    with tempfile.TemporaryDirectory(prefix="ecomsearch-train-") as tmp:
        report = Path(tmp) / "report.json"
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"train": train, "report": str(report), "threads": threads},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=use_gpu, resources_per_worker=None if use_gpu else {"CPU": 1}
            ),
            run_config=RunConfig(storage_path=tmp, name="finetune"),
        )
        trainer.fit()
        return json.loads(report.read_text(encoding="utf-8"))
