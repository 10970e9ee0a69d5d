"""The ``retinal_age`` job spec (see the package docstring and ``jobs/retinal_age.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medray.config import JobBase, StrictModel, register_job
from medray.methods.classify import AugmentSpec
from medray.methods.retinal_age.losses import LOSSES
from medray.methods.retinal_age.offsets import OffsetSpec


class AgeData(StrictModel):
    manifests: list[str] = Field(min_length=1, description="fundus_age manifest URIs (image, age, split; "
                                 "optional disease); several are scored and trained on together")
    age_column: str = "age"
    image_size: int = Field(224, ge=16)
    mode: Literal["RGB", "L"] = "RGB"
    resize: Literal["pad", "crop", "stretch"] = "pad"
    train_splits: list[str] = ["train"]
    val_splits: list[str] = ["val"]
    eval_splits: list[str] = ["test"]
    cache: bool | Literal["auto"] = "auto"
    cache_max_gb: float = 4.0
    decode_batch_size: int = 16
    shuffle_buffer: int = 256
    augment: AugmentSpec = Field(default_factory=lambda: AugmentSpec(rotate_deg=10.0, brightness=0.0,
                                                                   contrast=0.0, saturation=0.0))


class ResponsesSpec(StrictModel):
    """Stage 1: the catalogued fundus-disease classifier whose response ``r`` (P(disease)) drives the shift."""

    classifier: str = Field(description="catalogue ref: 'name', 'name:3' or 'name@alias'")
    classifier_catalog: str | None = Field(None, description="catalogue URI (default: run.catalog)")
    positive_class: str | int | None = Field(
        None, description="class whose probability is r (name or index); default: class 1 of a binary model")
    batch_size: int = Field(32, ge=1)
    concurrency: int = Field(1, ge=1, description="inference actors")
    num_cpus: float = Field(0.5, gt=0)
    use_gpu: bool | Literal["auto"] = "auto"


class AgeHead(StrictModel):
    """Stage 3: one logit per 1-year bin ``age_min .. age_max``, and the loss."""

    age_min: int = 20
    age_max: int = 80
    sigma: float = Field(2.0, gt=0, description="std (years) of the Gaussian label distributions")
    loss: Literal[LOSSES] = "shifted"  # type: ignore[valid-type]
    lambda_1: float = Field(0.2, ge=0, description="weight of the mean term")
    lambda_2: float = Field(0.05, ge=0, description="weight of the variance term")

    @model_validator(mode="after")
    def _range(self) -> "AgeHead":
        if self.age_max <= self.age_min:
            raise ValueError(f"age_max ({self.age_max}) must be above age_min ({self.age_min})")
        return self

    @property
    def num_bins(self) -> int:
        return self.age_max - self.age_min + 1


@register_job
class Config(JobBase):
    method: Literal["retinal_age"]
    data: AgeData
    responses: ResponsesSpec
    offsets: OffsetSpec = Field(default_factory=OffsetSpec)
    head: AgeHead = Field(default_factory=AgeHead)
    modality: str = "fundus"
