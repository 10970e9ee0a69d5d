"""What every method's per-worker loop shares (leaf helpers; methods stay readable top to bottom).

:class:`Worker` wraps one Ray Train worker: rank and world size, the device (GPU when Ray gave one,
else CPU), DDP wrapping (NCCL on GPU, gloo on CPU, chosen by Ray Train), bf16 autocast and
channels_last on GPU, seeding, metric all-reduce and gather, rank-0 checkpoints that hold
model + optimizer + scheduler + epoch + step + RNG state, resume, and a readable progress line.

A checkpoint directory holds::

    model.safetensors      the (unwrapped) model weights
    train_state.pt         optimizer, scheduler, epoch, step, best metric, RNG states
                           (tensors and plain containers only: loaded with weights_only=True)
    meta.json              epoch, metrics, method

Methods with several networks (mean teacher: student + teacher) pass extra models by name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn


def in_ray_train() -> bool:
    try:
        import ray.train

        ray.train.get_context()
        return True
    except Exception:  # noqa: BLE001 - not inside a Ray Train worker
        return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def quiet_ray_data() -> None:
    """Ray Data's per-dataset progress bars drown the epoch lines in logs: medray prints its own."""
    try:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    except Exception:  # noqa: BLE001 - older/newer Ray without these knobs
        pass


@dataclass
class TrainState:
    """Progress that survives a restart."""

    epoch: int = 0  # next epoch to run
    step: int = 0  # optimizer steps taken
    best: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_epoch: int | None = None  # set when this worker group resumed from a checkpoint

    def update_best(self, value: Any, mode: str) -> None:
        """Keep the best value of the run's metric (``mode`` "min" or "max"); NaN/non-floats are ignored."""
        if isinstance(value, float) and not math.isnan(value):
            if self.best is None or (value < self.best if mode == "min" else value > self.best):
                self.best = value


def optimizer_step(optim, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> None:
    """One optimizer step: optional gradient clipping (``optim.clip_grad_norm``), step, scheduler step,
    zero the gradients."""
    if optim.clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.clip_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def build_optimizer(optim, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                               nesterov=True)
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)


def build_scheduler(optim, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Per-optimizer-step LambdaLR: linear warmup, then cosine to 0, step decay, or constant."""
    spe = max(1, steps_per_epoch)
    total = max(1, optim.epochs * spe)
    warm = int(optim.warmup_epochs * spe)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if optim.scheduler == "cosine":
            t = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if optim.scheduler == "step":
            return optim.gamma ** ((step // spe) // optim.step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state() -> dict[str, Any]:
    st = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [st[0], torch.from_numpy(np.asarray(st[1]).astype(np.int64)), int(st[2]), int(st[3]), float(st[4])],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    random.setstate((s["python_version"], tuple(s["python"]), None))


class Worker:
    """One training worker's runtime (also usable outside Ray: rank 0 of 1, for unit tests)."""

    def __init__(self, cfg: Any, log_every_s: float = 30.0):
        self.cfg = cfg
        self.ray = in_ray_train()
        if self.ray:
            import ray.train
            import ray.train.torch

            ctx = ray.train.get_context()
            self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
            self.device = ray.train.torch.get_device()
        else:
            self.rank, self.world = 0, 1
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        quiet_ray_data()
        self.cuda = self.device.type == "cuda"
        self.amp = self.cuda and bool(cfg.scaling.amp)
        self.channels_last = self.cuda and bool(cfg.scaling.channels_last)
        self.log_every_s = log_every_s
        seed_everything(cfg.run.seed * 1000 + self.rank)
        if not self.cuda:
            torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
        self._t_epoch = time.time()
        self._t_start = time.time()

    # -------------------------------------------------------------- model / precision
    def prepare(self, model: nn.Module, ddp: bool = True) -> nn.Module:
        """Move to device (channels_last on GPU) and wrap in DDP when world > 1."""
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.ray and ddp:
            import ray.train.torch

            return ray.train.torch.prepare_model(model, parallel_strategy="ddp" if self.world > 1 else None)
        return model.to(self.device)

    def autocast(self):
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        return model.module if hasattr(model, "module") else model

    # -------------------------------------------------------------- collectives
    def _dist(self) -> bool:
        return self.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    def allreduce_sums(self, sums: dict[str, float]) -> dict[str, float]:
        """Sum each value over workers (every worker gets the total)."""
        if not self._dist():
            return dict(sums)
        keys = sorted(sums)
        dev = self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=dev)
        torch.distributed.all_reduce(t)
        return {k: float(v) for k, v in zip(keys, t.tolist())}

    def gather(self, obj: Any) -> list[Any]:
        """Every worker's ``obj`` (any picklable), in rank order, on every worker."""
        if not self._dist():
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self._dist():
            torch.distributed.barrier()

    # -------------------------------------------------------------- data
    def shard(self, name: str):
        if not self.ray:
            raise RuntimeError("dataset shards exist only inside Ray Train")
        import ray.train

        return ray.train.get_dataset_shard(name)

    # -------------------------------------------------------------- checkpoints
    def restore(self, models: dict[str, nn.Module], optimizer=None, scheduler=None) -> TrainState:
        """Load the latest checkpoint Ray hands this worker group (after a failure or a re-run)."""
        state = TrainState()
        if not self.ray:
            return state
        import ray.train
        from safetensors.torch import load_file

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return state
        with ckpt.as_directory() as d:
            for name, m in models.items():
                fname = "model.safetensors" if name == "model" else f"{name}.safetensors"
                self.unwrap(m).load_state_dict(load_file(os.path.join(d, fname), device="cpu"))
            ts = torch.load(os.path.join(d, "train_state.pt"), map_location="cpu", weights_only=True)
        if optimizer is not None and ts.get("optimizer"):
            optimizer.load_state_dict(ts["optimizer"])
        if scheduler is not None and ts.get("scheduler"):
            scheduler.load_state_dict(ts["scheduler"])
        if self.rank == 0 and ts.get("rng"):
            _set_rng_state(ts["rng"])
        state.epoch, state.step = int(ts["epoch"]), int(ts["step"])
        state.best = ts.get("best")
        state.history = json.loads(ts.get("history", "[]"))
        state.resumed_from_epoch = state.epoch
        self.log(f"resumed from checkpoint: next epoch {state.epoch}, step {state.step}")
        return state

    def report(self, metrics: dict[str, Any], state: TrainState, models: dict[str, nn.Module],
               optimizer=None, scheduler=None, checkpoint: bool = True,
               extra_files: dict[str, bytes] | None = None) -> None:
        """Report (all workers, same number of calls); rank 0 attaches the checkpoint."""
        metrics = {k: (float(v) if isinstance(v, (np.floating, torch.Tensor)) else v) for k, v in metrics.items()}
        if not self.ray:
            state.history.append(metrics)
            return
        import ray.train
        from safetensors.torch import save_file

        from medray.models.registry import state_dict_for_export

        if self.rank != 0 or not checkpoint:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            for name, m in models.items():
                fname = "model.safetensors" if name == "model" else f"{name}.safetensors"
                save_file(state_dict_for_export(m), os.path.join(d, fname))
            torch.save(
                {
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "epoch": state.epoch,
                    "step": state.step,
                    "best": state.best,
                    "rng": _rng_state(),
                    "history": json.dumps(state.history, default=float),
                },
                os.path.join(d, "train_state.pt"),
            )
            with open(os.path.join(d, "meta.json"), "w") as f:
                json.dump({"epoch": state.epoch, "metrics": metrics, "method": self.cfg.method}, f,
                          default=float, indent=1)
            for fname, data in (extra_files or {}).items():
                with open(os.path.join(d, fname), "wb") as f:
                    f.write(data)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                             checkpoint_dir_name=f"epoch_{state.epoch:04d}")

    # -------------------------------------------------------------- progress
    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[medray] {msg}", file=sys.stderr, flush=True)

    def epoch_start(self) -> None:
        self._t_epoch = time.time()
        self._last_log = time.time()

    def step_progress(self, epoch: int, step_in_epoch: int, steps_total: int | None, loss: float) -> None:
        """A line every ``log_every_s`` seconds inside long epochs."""
        now = time.time()
        if self.rank == 0 and now - getattr(self, "_last_log", now) >= self.log_every_s:
            self._last_log = now
            tot = f"/{steps_total}" if steps_total else ""
            print(f"[medray]   epoch {epoch + 1} step {step_in_epoch}{tot} loss {loss:.4f}", file=sys.stderr,
                  flush=True)

    def epoch_line(self, epoch: int, epochs: int, steps: int, images: int, metrics: dict[str, Any],
                   metric_name: str) -> str:
        """``epoch 3/10 | 4.1 step/s | 130 img/s | loss 0.41 | val_auc 0.83 | ETA 1m02s``"""
        dt = max(1e-9, time.time() - self._t_epoch)
        left = (epochs - epoch - 1) * dt
        eta = f"{int(left // 60)}m{int(left % 60):02d}s"
        parts = [f"epoch {epoch + 1}/{epochs}", f"{steps / dt:.1f} step/s", f"{images / dt:.0f} img/s"]
        if "train_loss" in metrics:
            parts.append(f"loss {metrics['train_loss']:.4f}")
        for k in dict.fromkeys([metric_name, "val_loss", "val_acc", "val_auc"]):
            v = metrics.get(k)
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                parts.append(f"{k} {v:.4f}")
        parts.append(f"ETA {eta}")
        line = " | ".join(parts)
        self.log(line)
        return line
