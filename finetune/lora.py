"""LoRA for either model (``lora_rank`` > 0 in its training config; ``peft``).

Adapters of rank ``lora_rank`` on the attention's query and value projections; only they (and whatever the
task head adds) train.  A checkpoint holds the adapters alone under ``<out>/lora/`` (what a parameter-efficient
run adds) and the merged model beside them, which serving and the index job load like any other.
"""

from __future__ import annotations

import copy
from pathlib import Path


def adapt(module, cfg, task_type: str):
    """``module`` (a transformers model) with LoRA adapters injected in place, as a peft model; ``task_type``
    names peft's ``TaskType`` (``SEQ_CLS`` keeps a classifier head trainable)."""
    from peft import LoraConfig, TaskType, get_peft_model

    lcfg = LoraConfig(
        task_type=getattr(TaskType, task_type),
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=["query", "value"],
    )
    return get_peft_model(module, lcfg)


def save_adapters(peft_model, folder: str | Path):
    """Write the adapters under ``<folder>/lora/``; returns the merged model (a copy: training goes on with the
    adapters)."""
    peft_model.save_pretrained(str(Path(folder) / "lora"))
    return copy.deepcopy(peft_model).merge_and_unload()
