"""Evaluation of the skin workflow: stage 3 vs stage 5 and the heatmap figures.

* Classifiers: both predict the clean test split (manifest labels, clean) with Ray Data; accuracy,
  balanced accuracy, confusion matrices (``confusion_stage3.png``, ``confusion_stage5.png``). When the
  manifest was written by the skin generator, the noisy test rows are also scored against their TRUE
  labels (recomputed from the generator's seed; the manifest's labels there are noisy).
* Heatmaps: for a few box rows of the val split, the image, the target (blind ring in grey) and the
  regressor's prediction side by side (``heatmaps.png``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medray import storage
from medray.methods.skin import Config
from medray.methods.skin import stages as S


def _predict(job: Config, stage: str, arch: dict[str, Any], part: str, splits: list[str]) -> dict[str, np.ndarray]:
    import ray

    d = job.data
    res = int(job.classifier.min_resolution)
    res = S.read_done(job, "3_classifier")["scale"]["resolution"] if S.is_done(job, "3_classifier") else res
    ds = S.read_part(job, part, splits, ["image", d.label_column]).map_batches(
        S.ClassifyBatch,
        fn_constructor_kwargs={"weights_uri": storage.join(S.stage_uri(job, stage), "model.safetensors"),
                               "arch": arch, "size": res, "how": d.resize, "s3": job.storage.s3},
        batch_size=job.classifier.predict_batch_size,
        compute=ray.data.ActorPoolStrategy(size=job.foreground.concurrency), num_cpus=job.foreground.num_cpus,
        batch_format="numpy")
    ds = ds.select_columns(["image", d.label_column, "pred"])
    rows = {"image": [], "label": [], "pred": []}
    for b in ds.iter_batches(batch_size=4096, batch_format="numpy"):
        rows["image"].extend(str(x) for x in b["image"])
        rows["label"].extend(b[d.label_column].tolist())
        rows["pred"].extend(b["pred"].tolist())
    return {"image": np.asarray(rows["image"], object), "label": np.asarray(rows["label"], object),
            "pred": np.asarray(rows["pred"], np.int64)}


def scores(y: np.ndarray, pred: np.ndarray, k: int) -> dict[str, Any]:
    from medray.evaluation import metrics as M

    y = np.asarray(y, np.int64)
    return {"n": int(len(y)), "acc": float(M.accuracy(y, pred)) if len(y) else float("nan"),
            "bal_acc": float(M.balanced_accuracy(y, pred, k)) if len(y) else float("nan"),
            "confusion_matrix": M.confusion_matrix(y, pred, k).tolist() if len(y) else []}


def _true_labels(job: Config) -> dict[str, int] | None:
    """image URI -> true label, for manifests written by the skin generator (else None)."""
    from medray.data import manifest

    try:
        meta = manifest.info(job.data.manifest, job.storage.s3).meta.get("synth") or {}
    except Exception:  # noqa: BLE001 - a folder of shards, or no metadata: no ground truth
        return None
    if meta.get("kind") != "skin":
        return None
    from medray.data.synth.skin import true_labels

    truth = true_labels(job.data.manifest, job.storage.s3)
    images = [u for b in manifest.iter_batches(job.data.manifest, columns=["image"], s3=job.storage.s3)
              for u in b.column(0).to_pylist()]
    return dict(zip(images, truth))


def heatmap_figure(job: Config, classes: list[str], path: str) -> bytes | None:
    """Image | target (blind ring grey) | prediction for a few box rows of the val split."""
    from medray.evaluation import plots
    from medray.methods.skin.targets import boxes_of, heat_targets, transform_boxes

    n = job.evaluate.heatmap_examples
    if n == 0:
        return None
    d, r = job.data, job.regressor
    cols = ["image", "width", "height", d.label_column, d.boxes_column]
    rows = S.read_part(job, "box", d.val_splits, cols).limit(n).take_all()
    if not rows:
        rows = S.read_part(job, "box", d.train_splits, cols).limit(n).take_all()
    if not rows:
        return None
    model = S.build_regressor(S.regressor_arch(job, len(classes)),
                              storage.read_bytes(storage.join(S.stage_uri(job, "1_regressor"), "model.safetensors"),
                                                 job.storage.s3))
    size, g = r.image_size, r.image_size // r.out_stride
    batch = {"image": np.asarray([row["image"] for row in rows], object)}
    imgs = np.stack([S.load_rgb(batch, i, size, d.resize, job.storage.s3) for i in range(len(rows))])
    heat, _ = S.foreground_maps(model, imgs, job.foreground.downsample, r.out_stride)
    panels, titles = [], []
    for i, row in enumerate(rows):
        bx, bl = boxes_of(row[d.boxes_column], row.get(d.label_column))
        bx = transform_boxes(bx, int(row["width"]), int(row["height"]), size, d.resize, r.out_stride)
        t = heat_targets(bx, bl, (g, g), len(classes), kind=r.decay, sigma=r.sigma)
        tgt = plots.blend_heatmap(imgs[i], t.foreground(), alpha=0.7, vmin=0.0, vmax=1.0)
        ring = np.kron(t.ignore.astype(np.uint8), np.ones((r.out_stride, r.out_stride), np.uint8)).astype(bool)
        ring = ring[: size, : size]
        tgt[ring] = (0.5 * tgt[ring] + 0.5 * 128).astype(np.uint8)
        pred = plots.blend_heatmap(imgs[i], heat[i].max(0), alpha=0.7, vmin=0.0, vmax=1.0)
        lab = classes[bl[0]] if bl else "?"
        panels += [imgs[i], tgt, pred]
        titles += [f"{lab}: image", "target (grey = blind ring)", f"predicted (max {heat[i].max():.2f})"]
    return plots.image_grid(panels, titles, ncols=3, title="Lesion heatmaps: target vs regressor", path=path,
                            s3=job.storage.s3)


def evaluate(job: Config, classes: list[str], counts: dict[str, Any], infos: dict[str, Any]) -> dict[str, Any]:
    from medray.evaluation import plots

    S.say("evaluate: stage 3 vs stage 5 on held-out rows")
    k = len(classes)
    scale = infos["3_classifier"]["scale"]
    out_dir = S.stage_uri(job, "evaluate")
    s3 = job.storage.s3
    arch3 = S.classifier_arch(scale, k, 3, job.classifier.drop_rate)
    arch5 = S.classifier_arch(scale, k, 4, job.classifier.drop_rate)
    result: dict[str, Any] = {"sets": {}}
    d = job.data
    if sum(counts["clean_test"]):
        p3 = _predict(job, "3_classifier", arch3, "clean", d.test_splits)
        p5 = _predict(job, "5_classifier", arch5, "clean", d.test_splits)
        y = p3["label"].astype(np.int64)
        order5 = {u: i for i, u in enumerate(p5["image"])}
        pred5 = p5["pred"][[order5[u] for u in p3["image"]]]
        result["sets"]["clean_test"] = {"stage3": scores(y, p3["pred"], k), "stage5": scores(y, pred5, k)}
        for st in ("stage3", "stage5"):
            cm = result["sets"]["clean_test"][st]["confusion_matrix"]
            plots.plot_confusion_matrix(np.asarray(cm), classes, title=f"{st.replace('stage', 'Stage ')} classifier: "
                                        f"clean test split (n={len(y)})",
                                        path=storage.join(out_dir, f"confusion_{st}.png"), s3=s3)
    truth = _true_labels(job)
    if truth is not None and sum(counts["full_test"]):
        p3 = _predict(job, "3_classifier", arch3, "full", d.test_splits)
        p5 = _predict(job, "5_classifier", arch5, "full", d.test_splits)
        order5 = {u: i for i, u in enumerate(p5["image"])}
        y = np.asarray([truth[u] for u in p3["image"]], np.int64)
        pred5 = p5["pred"][[order5[u] for u in p3["image"]]]
        noisy = p3["label"].astype(np.int64)
        result["sets"]["full_test_true_labels"] = {"stage3": scores(y, p3["pred"], k), "stage5": scores(y, pred5, k),
                                                   "noisy_labels_vs_true_acc": float((noisy == y).mean())}
    try:
        heatmap_figure(job, classes, storage.join(out_dir, "heatmaps.png"))
    except Exception as e:  # noqa: BLE001 - a figure must not fail a finished workflow
        S.say(f"evaluate: could not draw the heatmap figure: {e}")
    summary = {}
    for name, sets in result["sets"].items():
        for st in ("stage3", "stage5"):
            summary[f"{name}/{st}_bal_acc"] = round(sets[st]["bal_acc"], 4)
            summary[f"{name}/{st}_acc"] = round(sets[st]["acc"], 4)
    result["summary"] = summary
    storage.write_json(storage.join(out_dir, "metrics.json"), result, s3)
    S.say(f"evaluate: {summary}")
    return result
