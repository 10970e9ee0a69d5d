"""Losses of METHODS.md §1 over one logit per 1-year age bin.

``p = softmax(logits)`` over bins ``ages = age_min .. age_max``; the predicted age is the expectation
``y_hat = sum_k p_k ages_k`` and the spread ``Var(p) = sum_k p_k (ages_k - y_hat)^2``. Label-distribution
learning (LDL) compares ``p`` with a discretised Gaussian around a target age (``sigma`` years) by
``KL(target || p)``.

The disease-aware loss (``loss: shifted``), per image, with ``lambda_1`` (mean term) and ``lambda_2``
(variance term), averaged over the batch:

=========================  ====================================================================
 case                       loss
=========================  ====================================================================
 1: ``y_hat < y``           ``LDL(y) + l1 (y_hat - y)^2 / 2 + l2 Var(p)``
 2: ``y <= y_hat <= y+dy``  ``l1 (1 - r) (y_hat - y)^2 / 2 + l2 Var(p)``        (only when dy > 0)
 3: ``y_hat > y + dy``      ``LDL(y + dy) + l1 (y_hat - (y + dy))^2 / 2 + l2 Var(p)``
=========================  ====================================================================

Case 2 applies only to shifted samples (``dy > 0``); with ``dy = 0`` cases 1 and 3 are the same
formula, so the loss is exactly the mean-variance + LDL loss around ``y`` (the ``mean_variance``
baseline). The baselines: ``l1`` (``|y_hat - y|``), ``ldl`` (``LDL(y)`` alone) and ``mean_variance``
(``LDL(y) + l1 (y_hat - y)^2 / 2 + l2 Var(p)``), all without the shift.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LossName = Literal["shifted", "mean_variance", "ldl", "l1"]
LOSSES: tuple[str, ...] = ("shifted", "mean_variance", "ldl", "l1")


def age_bins(age_min: int, age_max: int, device=None) -> torch.Tensor:
    """Bin centres ``age_min .. age_max`` (inclusive, 1-year bins) as float32."""
    return torch.arange(int(age_min), int(age_max) + 1, dtype=torch.float32, device=device)


def gaussian_targets(mu: torch.Tensor, ages: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(N, K)`` discretised Gaussians around ``mu`` (N,), normalised over the bins."""
    d = ages[None, :] - mu.float()[:, None]
    logits = -(d * d) / (2.0 * float(sigma) ** 2)
    return torch.softmax(logits, dim=1)  # = exp(...) / sum exp(...), stable for mu far outside the bins


def expected_age(probs: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
    return probs @ ages


def variance(probs: torch.Tensor, ages: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    m = expected_age(probs, ages) if mean is None else mean
    d = ages[None, :] - m[:, None]
    return (probs * d * d).sum(1)


def ldl(log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(target || p)``."""
    return (target * (torch.log(target.clamp_min(1e-12)) - log_probs)).sum(1)


def loss_terms(logits: torch.Tensor, y: torch.Tensor, dy: torch.Tensor | None, r: torch.Tensor | None,
               ages: torch.Tensor, *, loss: str = "shifted", sigma: float = 2.0, lambda_1: float = 0.2,
               lambda_2: float = 0.05) -> dict[str, torch.Tensor]:
    """Per-sample loss and its parts: ``loss`` (N,), ``case`` (N,) int (1/2/3; 0 for baselines
    other than shifted), ``y_hat``, ``var``."""
    logits = logits.float()
    y = y.float()
    log_p = F.log_softmax(logits, 1)
    p = log_p.exp()
    y_hat = expected_age(p, ages)
    var = variance(p, ages, y_hat)
    zeros = torch.zeros_like(y)
    if loss == "l1":
        return {"loss": (y_hat - y).abs(), "case": zeros.long(), "y_hat": y_hat, "var": var}
    ldl_y = ldl(log_p, gaussian_targets(y, ages, sigma))
    if loss == "ldl":
        return {"loss": ldl_y, "case": zeros.long(), "y_hat": y_hat, "var": var}
    mv = lambda_1 * (y_hat - y) ** 2 / 2 + lambda_2 * var
    if loss == "mean_variance" or dy is None:
        return {"loss": ldl_y + mv, "case": zeros.long() + 1, "y_hat": y_hat, "var": var}
    if loss != "shifted":
        raise ValueError(f"unknown loss {loss!r} (one of {LOSSES})")
    dy = dy.float()
    r = zeros if r is None else r.float().clamp(0, 1)
    y_up = y + dy
    with torch.no_grad():
        yh = y_hat.detach()
        case2 = (dy > 0) & (yh >= y) & (yh <= y_up)
        case1 = (yh < y) & ~case2
        case = torch.where(case2, 2, torch.where(case1, 1, 3))
    # case 3 is evaluated only where needed (LDL around y + dy); with dy = 0 it equals case 1
    ldl_up = ldl(log_p, gaussian_targets(y_up, ages, sigma))
    l1 = ldl_y + mv
    l2 = lambda_1 * (1 - r) * (y_hat - y) ** 2 / 2 + lambda_2 * var
    l3 = ldl_up + lambda_1 * (y_hat - y_up) ** 2 / 2 + lambda_2 * var
    out = torch.where(case == 1, l1, torch.where(case == 2, l2, l3))
    return {"loss": out, "case": case, "y_hat": y_hat, "var": var}


def retinal_age_loss(logits: torch.Tensor, y: torch.Tensor, dy: torch.Tensor | None = None,
                     r: torch.Tensor | None = None, *, ages: torch.Tensor, loss: str = "shifted",
                     sigma: float = 2.0, lambda_1: float = 0.2, lambda_2: float = 0.05) -> torch.Tensor:
    """The batch mean of :func:`loss_terms`' per-sample loss."""
    return loss_terms(logits, y, dy, r, ages, loss=loss, sigma=sigma, lambda_1=lambda_1,
                      lambda_2=lambda_2)["loss"].mean()
