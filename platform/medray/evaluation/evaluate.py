"""``medray evaluate MODEL MANIFEST... --out DIR``: a catalogued classifier on labelled manifests.

Predictions run as Ray Data batch inference (an actor pool holding the model; GPU when the cluster has
one), streamed back as class probabilities only. Writes into ``DIR`` (local folder or ``s3://``):

* ``metrics.json``: accuracy, balanced accuracy, per-class precision/recall/F1, ROC AUC, average
  precision, calibration error, sensitivity/specificity, confusion matrix, row counts, throughput;
* ``roc.png``, ``pr.png``, ``confusion.png``, ``calibration.png``;
* ``report.html``: one self-contained page (images embedded) a clinician-scientist can open offline.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from medray import storage
from medray.errors import MedrayError

LABEL_COLUMN = {"fundus_disease": "label", "skin": "label", "rop": "stage", "fundus_age": "disease"}


def collect_predictions(model_ref: str, manifests: list[str], catalog: str, splits: list[str] | None,
                        s3: Any = None) -> dict[str, Any]:
    """Run the model over the labelled rows of ``manifests``; returns y, probs, images, throughput."""
    from medray.data import pipeline
    from medray.inference.batch import predict_dataset
    from medray.training.launcher import ensure_ray

    ensure_ray()
    ys, ps, imgs = [], [], []
    t0 = time.time()
    for uri in manifests:
        inf = pipeline.manifest_info(uri, s3)
        col = LABEL_COLUMN.get(inf.task)
        if col is None:
            raise MedrayError(f"{uri}: task {inf.task!r} has no class label to evaluate a classifier on")
        ds = predict_dataset(catalog, model_ref, uri, splits=splits, columns=["image", col], s3=s3)
        for b in ds.iter_batches(batch_size=256, batch_format="numpy"):
            lab = b[col]
            keep = np.array([v is not None and not (isinstance(v, float) and np.isnan(v)) for v in lab])
            if not keep.any():
                continue
            ys.append(np.asarray(lab[keep], dtype=np.int64))
            ps.append(np.stack(b["probs"][keep]).astype(np.float64))
            imgs += [str(x) for x in b["image"][keep]]
    dt = time.time() - t0
    if not ys:
        raise MedrayError(f"no labelled rows in splits {splits or 'all'} of {manifests}")
    y, p = np.concatenate(ys), np.concatenate(ps)
    return {"y": y, "probs": p, "images": imgs, "seconds": dt, "images_per_s": len(y) / max(dt, 1e-9)}


def evaluate_model(model_ref: str, manifests: str | list[str], out: str, catalog: str,
                   split: str = "test", s3: Any = None) -> dict[str, Any]:
    """Evaluate a catalogued classifier; returns the paths written and headline metrics."""
    from medray.catalog import Catalog
    from medray.evaluation import metrics as M
    from medray.evaluation import plots, report

    if isinstance(manifests, str):
        manifests = [manifests]
    manifests = [storage.to_uri(m) for m in manifests]
    out = storage.to_uri(out)
    card = Catalog(catalog, s3=s3).get(model_ref)
    splits = None if split in ("all", "") else [s.strip() for s in split.split(",") if s.strip()]
    res = collect_predictions(model_ref, manifests, catalog, splits, s3)
    y, p = res["y"], res["probs"]
    names = list(card.labels) or [str(i) for i in range(p.shape[1])]
    rep = M.classification_report(y, p, names)
    rep.update({"model": f"{card.name}:{card.version}", "manifests": manifests, "splits": splits or "all",
                "n": int(len(y)), "images_per_s": round(res["images_per_s"], 2)})
    figs = {
        "roc.png": plots.plot_roc(y, p, names, title=f"ROC — {card.name}:{card.version}"),
        "pr.png": plots.plot_pr(y, p, names, title=f"Precision-recall — {card.name}:{card.version}"),
        "confusion.png": plots.plot_confusion_matrix(M.confusion_matrix(y, p.argmax(1), len(names)), names),
        "calibration.png": plots.plot_reliability(y, p, positive_name=names[-1]),
    }
    for fname, png in figs.items():
        storage.write_bytes(storage.join(out, fname), png, s3)
    headline = {"n": rep["n"], "accuracy": rep.get("accuracy"), "balanced_accuracy": rep.get("balanced_accuracy"),
                "auc": (rep.get("binary") or rep.get("macro") or {}).get("auc"),
                "ece": (rep.get("calibration") or {}).get("ece")}
    html = report.write_report(
        out,
        title=f"Evaluation of {card.name}:{card.version}",
        classes=names,
        subtitle=f"{card.task} / {card.modality} — {len(y)} labelled images from {', '.join(manifests)} "
                 f"(splits: {', '.join(splits) if splits else 'all'})",
        metrics=rep,
        images=[("roc.png", figs["roc.png"], "ROC curve (one-vs-rest per class)"),
                ("pr.png", figs["pr.png"], "Precision-recall curve"),
                ("confusion.png", figs["confusion.png"], "Confusion matrix: counts and row-normalised"),
                ("calibration.png", figs["calibration.png"], "Reliability diagram")],
        notes=[f"Model card: {card.description}", f"Intended use: {card.intended_use}",
               f"Throughput of this evaluation: {res['images_per_s']:.1f} images/s"],
        s3=s3,
    )
    return {"report": html, "metrics": storage.join(out, "metrics.json"), **headline}
