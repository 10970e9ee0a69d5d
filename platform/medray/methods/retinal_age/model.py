"""The age network: any registered/timm backbone with one logit per 1-year age bin."""

from __future__ import annotations

from typing import Any

from torch import nn


def build_model(name: str, num_bins: int, in_chans: int = 3, weights: str | None = None, s3: Any = None,
                **kwargs: Any) -> nn.Module:
    """``create_model(name, num_classes=num_bins)``: the classifier head becomes the age-bin head
    (``timm/<name>`` works for any timm model; pretrained weights are never downloaded)."""
    from medray.models import create_model

    return create_model(name, num_classes=num_bins, in_chans=in_chans, pretrained=False, weights=weights, s3=s3,
                        **kwargs)
