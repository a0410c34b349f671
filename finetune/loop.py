"""The training loop both fine-tuning jobs share: AdamW with warm-up and linear decay, gradient clipping,
mixed precision on a GPU, step and wall-time caps, evaluation every N steps with the best checkpoint kept,
a JSON log per evaluation, a progress bar, and resume from the last evaluation.

**Data parallel** (``workers`` > 1, inside a torch process group: :mod:`finetune.distributed`): every
process draws the same global batch from the same seeded generator and trains on its share
(``batch[rank::world]``); gradients (and the logged loss) are averaged over the processes after each backward,
so the model takes the same steps as one process on the whole batch.  Only rank 0 evaluates, saves and logs;
whether to stop is rank 0's decision, broadcast each step (wall-time caps differ per process).

Its settings are a :class:`TrainingLoopConfig` (either model's training config; the whole config is saved
with the resumable state, and only ``max_minutes`` may differ on resume).  The model-specific parts come in
as functions: ``loss_fn(batch)``, ``evaluate()`` (higher is better) and
``save(folder)``.  Batches come from ``make_batches(rng)``: a generator seeded by the run's seed, so a resumed
run replays the same order and skips the batches it already trained on.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from core.config import TrainingLoopConfig


def amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def world() -> tuple[int, int]:
    """(rank, world size) of the torch process group this process trains in; (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batch, rank: int, size: int):
    """This process's share of a global batch (every ``size``-th item from ``rank``; each part of a tuple of
    batches)."""
    if size == 1:
        return batch
    if isinstance(batch, tuple):
        return tuple(b[rank::size] for b in batch)
    return batch[rank::size]


def run(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    make_batches: Callable[[np.random.Generator], Iterator],
    loss_fn: Callable[[object], torch.Tensor],
    settings: TrainingLoopConfig,
    out: Path,
    save: Callable[[Path], None],
    evaluate: Callable[[], float] | None = None,
    log_path: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    desc: str = "training",
    extra_log: dict | None = None,
    pause_on_time: bool = False,
) -> dict:
    """Train ``model`` in place; keep the best checkpoint (by ``evaluate``, else the last) in ``out``.

    The resumable state (weights, optimizer, scheduler, step, RNG, log) is written next to ``out`` as
    ``<out>.resume.pt`` at every evaluation; with ``resume=True`` a run continues from it.  ``max_minutes`` caps
    the time of this run (a resumed run gets the cap again; the reported minutes count every run).  The state
    file is removed when the run reaches ``max_steps``; when the time cap stops it first, ``pause_on_time``
    keeps it (the run is *paused*: a resumed run goes on to ``max_steps`` with the same schedule, so a slow
    machine reaches the model a fast one trains in one go), otherwise the cap ends the run for good.
    """
    device = next(model.parameters()).device
    rank, size = world()
    lead = rank == 0
    dtype = amp_dtype(device)  # mixed precision on a GPU (bf16, else fp16); fp32 on a CPU
    # fp16 needs loss scaling; bf16 does not
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    opt = torch.optim.AdamW(params, lr=settings.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, settings.warmup_steps)) * max(0.0, 1 - s / max(1, settings.max_steps))
    )
    state_path = out.with_name(out.name + ".resume.pt")
    log: list[dict] = []
    best, step, spent = -math.inf, 0, 0.0
    torch.manual_seed(settings.seed)
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        saved = {k: v for k, v in state["settings"].items() if k != "max_minutes"}
        if saved != {k: v for k, v in asdict(settings).items() if k != "max_minutes"}:
            raise ValueError(
                f"{state_path}: saved by a run with other settings {state['settings']}; "
                "delete it or rerun without --resume (only max_minutes may change)"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        best, step, spent, log = state["best"], state["step"], state["minutes"], state["log"]
        torch.set_rng_state(state["torch_rng"])
    batch_iter = make_batches(np.random.default_rng(settings.seed))
    for _ in range(step):  # replay the order; the batches themselves are cheap to skip
        next(batch_iter)
    run_start = time.perf_counter()
    start = run_start - spent * 60

    def minutes() -> float:
        return (time.perf_counter() - start) / 60

    def out_of_time() -> bool:
        return (time.perf_counter() - run_start) / 60 >= settings.max_minutes

    def write_log() -> None:
        if log_path is not None and lead:
            payload = {"settings": asdict(settings), **(extra_log or {}), "log": log}
            log_path.write_text(json.dumps(payload, indent=1, ensure_ascii=False, default=str), encoding="utf-8")

    def checkpoint(loss: float | None) -> None:
        nonlocal best
        entry = {"step": step, "minutes": round(minutes(), 2), "loss": None if loss is None else round(loss, 4)}
        if size > 1:
            entry["workers"] = size
        if not lead:  # rank 0 evaluates, saves and keeps the resumable state
            log.append(entry)
            return
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                entry["dev"] = round(float(evaluate()), 4)
            model.train()
            if entry["dev"] > best:
                best = entry["dev"]
                save(out)
                entry["saved"] = True
        log.append(entry)
        write_log()
        torch.save(
            {
                "settings": asdict(settings),
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "best": best,
                "step": step,
                "minutes": minutes(),
                "log": log,
                "torch_rng": torch.get_rng_state(),
            },
            state_path,
        )

    if evaluate is not None and step == 0:
        checkpoint(None)
    model.train()
    bar = tqdm(total=settings.max_steps, initial=step, desc=desc, disable=not progress or not lead)
    running: list[float] = []
    step_times: list[float] = []
    done = step >= settings.max_steps  # every run trains at least one step: a resumed run always gets on
    while not done:
        batch = next(batch_iter)
        step += 1
        t_step = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(shard(batch, rank, size))
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            _average_gradients(params, size)
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            _average_gradients(params, size)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        sched.step()
        running.append(_mean_over_workers(loss.detach(), size))  # waits for the GPU: the step time is real
        step_times.append(time.perf_counter() - t_step)
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(running[-20:]):.3f}")
        done = _agree(step >= settings.max_steps or out_of_time(), size)
        if step % settings.eval_every == 0 or done:
            checkpoint(float(np.mean(running[-settings.eval_every :])))
    bar.close()
    paused = step < settings.max_steps  # the time cap stopped it first
    if lead:
        if evaluate is None:
            save(out)
        if not (paused and pause_on_time):
            state_path.unlink(missing_ok=True)
    return {
        "steps": step,
        "max_steps": settings.max_steps,
        "stopped_by": "max_minutes" if paused else "max_steps",
        "paused": paused and pause_on_time,
        "minutes": round(minutes(), 2),
        "best_dev": None if best == -math.inf else best,
        "seconds_per_step": round(float(np.median(step_times[3:] or step_times or [0.0])), 4),
        "amp": str(dtype).replace("torch.", "") if dtype else "fp32",
        "device": str(device),
        "log": log,
    }


def _average_gradients(params: list[torch.nn.Parameter], size: int) -> None:
    """Average each gradient over the processes (one flat all-reduce: a single message per step)."""
    if size == 1:
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= size
    i = 0
    for g in grads:
        g.copy_(flat[i : i + g.numel()].view_as(g))
        i += g.numel()


def _mean_over_workers(x: torch.Tensor, size: int) -> float:
    if size > 1:
        import torch.distributed as dist

        x = x.float().clone()
        dist.all_reduce(x)
        x /= size
    return float(x.item())


def _agree(flag: bool, size: int) -> bool:
    """Rank 0's decision, the same in every process (a wall-time cap is read on each clock)."""
    if size == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.broadcast(t, src=0)
    return bool(t.item())
