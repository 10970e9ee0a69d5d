"""Loss of the OCT segmentation: cross-entropy + soft Dice, both ignoring padded pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medray.methods.oct_layers.windows import IGNORE


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE,
                   eps: float = 1.0) -> torch.Tensor:
    """``1 - mean_k Dice_k`` over the classes present in the target or the prediction of the batch,
    computed on the non-ignored pixels only (``logits`` N x C x H x W, ``target`` N x H x W)."""
    n_cls = logits.shape[1]
    valid = (target != ignore_index)
    probs = F.softmax(logits.float(), 1) * valid.unsqueeze(1)
    onehot = F.one_hot(torch.where(valid, target, torch.zeros_like(target)).long(), n_cls)
    onehot = onehot.permute(0, 3, 1, 2).float() * valid.unsqueeze(1)
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    dice = (2 * inter + eps) / (denom + eps)
    return 1.0 - dice[present].mean()


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0,
                 class_weights: torch.Tensor | None = None, ignore_index: int = IGNORE) -> torch.Tensor:
    """Cross-entropy (padded pixels ignored) + ``dice_weight`` x soft Dice."""
    t = target.long()
    if bool((t != ignore_index).any()):
        ce = F.cross_entropy(logits.float(), t, weight=class_weights, ignore_index=ignore_index)
    else:
        ce = logits.sum() * 0.0
    if dice_weight:
        return ce + dice_weight * soft_dice_loss(logits, t, ignore_index)
    return ce
