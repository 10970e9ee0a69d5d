"""retinal_age: retinal age from a colour fundus photo with the disease-aware label shift (METHODS.md §1).

One job, four stages, each an artifact under ``run.storage_path/run.name/<stage>/`` (re-runs skip the
finished ones; ``medray train --force`` redoes them):

1. ``responses``: a catalogued binary fundus-disease classifier (``responses.classifier`` from
   ``responses.classifier_catalog``) scores every manifest row with Ray Data batch inference
   (:func:`medray.inference.batch.predict_dataset`, actor pool, GPU when present): ``r`` = P(disease).
2. ``offsets``: per integer age ``a`` the top-``p`` threshold ``T_a`` and the mean ``M_a`` (from the train
   split), then per row ``dy = 0`` if ``r < T_a``, else the first ``k`` with ``r < M_{a+k}`` (cap 10);
   audit table ``offsets.parquet`` (:mod:`.offsets` documents the open decisions and their defaults).
3. ``train``: Ray Train (DDP) of a backbone with one logit per 1-year bin ``head.age_min..age_max``;
   ``head.loss``: ``shifted`` (the three-case loss of :mod:`.losses`), or the baselines
   ``mean_variance`` / ``ldl`` / ``l1``.
4. ``evaluate``: MAE and Pearson r overall and on ``dy = 0``, age gap for ``dy = 0`` vs ``dy > 0`` (and for
   the manifest's ``disease`` flag), plots; then the model is published (task ``retinal_age``: its
   predictor returns ``retinal_age`` and, given the chronological age, ``age_gap``).

Manifest: ``fundus_age`` (``image``, ``age``, ``split``; ``disease`` optional, used only for reports).
Metrics reported per epoch: ``val_loss``, ``val_mae``, ``val_r``, ``val_mae_dy0``, ``val_gap_dy0``,
``val_gap_dy_pos``, ``train_case{1,2,3}_share``.

Launch::

    medray train jobs/retinal_age.yaml head.loss=mean_variance run.name=retinal_age_baseline
"""

from medray.methods.retinal_age.predictor import RetinalAgePredictor
from medray.methods.retinal_age.spec import AgeData, AgeHead, Config, ResponsesSpec
from medray.methods.retinal_age.stages import build_datasets, card_for, run
from medray.methods.retinal_age.train import evaluate_shard, train_loop_per_worker

__all__ = ["AgeData", "AgeHead", "Config", "ResponsesSpec", "RetinalAgePredictor", "build_datasets", "card_for",
           "evaluate_shard", "run", "train_loop_per_worker"]
