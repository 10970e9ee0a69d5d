"""The mean teacher: an exponential moving average (EMA) of the student's weights, never trained by
gradient (Tarvainen & Valpola 2017; SRC-MT, Liu et al. 2020).

After the student's optimizer step number ``k`` (k = 1, 2, ...), every teacher tensor becomes::

    decay_k  = min(1 - 1 / (k + 1), alpha)          # alpha = 0.99 by default
    teacher  = decay_k * teacher + (1 - decay_k) * student

so the teacher starts as a copy of the student (``k = 0`` would give decay 0) and averages over a
window that grows to ``1 / (1 - alpha)`` steps. Floating-point buffers (BatchNorm running mean and
variance) are averaged the same way; integer buffers (``num_batches_tracked``) are copied.

Under DDP the update is applied identically on every rank, because its inputs are identical:

* the teacher is created from the student AFTER ``prepare`` (DDP's constructor broadcasts rank 0's
  parameters and buffers), so it starts equal everywhere;
* DDP all-reduces the gradients, so after every optimizer step the student's *parameters* are equal
  on every rank, and the step counter ``k`` is the same;
* the student's *buffers* are not: BatchNorm updates its running statistics from each rank's local
  batch during the forward (DDP only re-broadcasts them at the start of the next forward). So
  :meth:`MeanTeacher.update` takes ``sync_buffers=True`` under DDP and then averages the student's
  floating buffers over the ranks (one all-reduce of a few small tensors) before folding them in.

The result is bit-identical teachers on all ranks; ``tests/methods/test_rop.py`` checks it with two
real gloo processes and a BatchNorm network, and the 2-worker Ray run reports ``teacher_rank_spread``
(max - min over ranks of a float64 checksum of the teacher), which stays exactly 0.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, alpha: float = 0.99) -> float:
    """The decay used after optimizer step ``step`` (1-based): ``min(1 - 1/(step+1), alpha)``."""
    return min(1.0 - 1.0 / (step + 1), alpha)


def _unwrap(m: nn.Module) -> nn.Module:
    m = m.module if hasattr(m, "module") else m
    return getattr(m, "_orig_mod", m)


class MeanTeacher:
    """Holds the teacher network and folds the student into it after every optimizer step."""

    def __init__(self, student: nn.Module, alpha: float = 0.99):
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"EMA alpha must be in [0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.model = copy.deepcopy(_unwrap(student))
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    @torch.no_grad()
    def update(self, student: nn.Module, step: int, sync_buffers: bool = False) -> float:
        """Fold the student in after optimizer step ``step``; returns the decay used."""
        d = ema_decay(step, self.alpha)
        s = _unwrap(student)
        for tp, sp in zip(self.model.parameters(), s.parameters()):
            tp.mul_(d).add_(sp.detach(), alpha=1.0 - d)
        sbufs = list(s.buffers())
        if sync_buffers and torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            sbufs = [_mean_over_ranks(b) if torch.is_floating_point(b) else b for b in sbufs]
        for tb, sb in zip(self.model.buffers(), sbufs):
            if torch.is_floating_point(tb):
                tb.mul_(d).add_(sb.detach().to(tb.dtype), alpha=1.0 - d)
            else:
                tb.copy_(sb)
        return d

    @torch.no_grad()
    def checksum(self) -> float:
        """A float64 sum over every teacher tensor (to compare ranks)."""
        return float(sum(t.double().sum() for t in self.model.state_dict().values() if t.is_floating_point()))


def _mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    backend = torch.distributed.get_backend()
    x = t.detach().clone()
    if backend != "nccl":
        x = x.cpu()
    torch.distributed.all_reduce(x)
    return (x / torch.distributed.get_world_size()).to(t.device)
