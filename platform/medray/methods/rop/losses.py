"""Losses of the semi-supervised ROP stager (METHODS.md §5)::

    total = CE(student(labelled view 1), stage)
            + w(t) * (L_pc + lambda * L_src)

* ``L_pc`` — prediction consistency: mean squared error between the student's and the teacher's class
  probabilities (softmax), averaged over the batch and the classes.
* ``L_src`` — semantic relation consistency (SRC-MT): for a batch of B penultimate feature vectors,
  L2-normalise each vector, form the B x B Gram matrix ``G = F F^T``, L2-normalise each row of ``G``;
  the loss is the mean squared difference between the student's and the teacher's matrices.
  Permuting the batch permutes rows and columns of both matrices alike, so the loss does not depend
  on the batch order; identical features give exactly 0.
* ``w(t)`` — sigmoid ramp-up (Laine & Aila 2017): ``w_max * exp(-5 (1 - t/T)^2)`` for ``t < T`` epochs,
  ``w_max`` after (``T = 0`` means no ramp). ``t`` is fractional (counted in optimizer steps).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sigmoid_rampup(t: float, length: float) -> float:
    """``exp(-5 (1 - t/length)^2)`` clipped to [0, 1] in ``t``; 1.0 when ``length <= 0``."""
    if length <= 0:
        return 1.0
    p = min(max(t, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - p) ** 2))


def consistency_weight(t: float, w_max: float, rampup_epochs: float) -> float:
    return w_max * sigmoid_rampup(t, rampup_epochs)


def prediction_consistency(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """MSE between softmax probabilities (the teacher side carries no gradient)."""
    ps = F.softmax(student_logits.float(), dim=1)
    pt = F.softmax(teacher_logits.detach().float(), dim=1)
    return F.mse_loss(ps, pt)


def relation_matrix(features: torch.Tensor) -> torch.Tensor:
    """Row-normalised B x B Gram matrix of L2-normalised feature vectors (any trailing shape is
    flattened)."""
    f = F.normalize(features.float().flatten(1), p=2, dim=1)
    return F.normalize(f @ f.t(), p=2, dim=1)


def relation_consistency(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the student's and the teacher's relation matrices (SRC-MT)."""
    if student_features.shape[0] != teacher_features.shape[0]:
        raise ValueError("student and teacher features must have the same batch size")
    gs = relation_matrix(student_features)
    gt = relation_matrix(teacher_features.detach())
    return ((gs - gt) ** 2).mean()


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target, weight=weight)


def total_loss(ce: torch.Tensor, l_pc: torch.Tensor, l_src: torch.Tensor, w: float, lam: float) -> torch.Tensor:
    return ce + w * (l_pc + lam * l_src)
