"""skin (METHODS.md §4): heatmap targets, losses, compound scaling, ranked sampling (fast, no Ray),
and the five-stage workflow end to end on a tiny generated set with 2 CPU workers (slow)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medray.config import parse_job
from medray.errors import ConfigError, MedrayError
from medray.methods.skin.stages import class_quotas, ranked_sample
from medray.methods.skin.targets import boxes_of, decay, heat_targets, transform_boxes

# --------------------------------------------------------------------------------------------
# heatmap targets


def _ring_reference(box, shape):
    """Brute force, straight from the definition: pixel centres outside the lesion ellipse (semi-axes
    w/2, h/2) and inside the ellipse grown by w//2 along x and h//2 along y."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    out = np.zeros(shape, bool)
    inside = np.zeros(shape, bool)
    for y in range(shape[0]):
        for x in range(shape[1]):
            dx, dy = x + 0.5 - cx, y + 0.5 - cy
            r_in = (dx / (w / 2)) ** 2 + (dy / (h / 2)) ** 2
            r_out = (dx / (w / 2 + w // 2)) ** 2 + (dy / (h / 2 + h // 2)) ** 2
            inside[y, x] = r_in <= 1
            out[y, x] = r_out <= 1 and r_in > 1
    return out, inside


def test_centre_is_one_and_decays_monotonically_along_both_axes():
    for box in [(10, 12, 31, 21), (10, 12, 30, 22), (5.5, 7.25, 17.5, 30.0)]:
        t = heat_targets([box], [2], (48, 48), 3)
        (px, py, k), = t.centres
        assert k == 2 and t.heat[2, py, px] == 1.0
        assert t.heat.max() == 1.0 and t.heat[[0, 1]].max() == 0.0
        row, col = t.heat[2, py], t.heat[2, :, px]
        for line, c in ((row, px), (col, py)):
            right, left = line[c:], line[: c + 1][::-1]
            nz_r, nz_l = right[right > 0], left[left > 0]
            assert (np.diff(nz_r) < 0).all() and (np.diff(nz_l) <= 0).all(), line
            assert (np.diff(nz_l[1:]) < 0).all()
        # the value is the gaussian of the normalised distance inside the ellipse
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        a, b = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
        for x in range(px - 3, px + 4):
            rho = math.hypot((x + 0.5 - cx) / a, (py + 0.5 - cy) / b)
            if rho <= 1 and x != px:
                assert t.heat[2, py, x] == pytest.approx(float(decay(np.array(rho))), abs=1e-6)


def test_blind_ring_is_exactly_half_the_diameter_wide_and_ignored_then_zero():
    # odd sizes: the centre row/column is the ellipse's axis, so widths can be counted in pixels
    box = (20, 14, 33, 23)  # w = 13 -> ring 6 px along x; h = 9 -> ring 4 px along y
    t = heat_targets([box], [0], (50, 60), 1)
    (px, py, _), = t.centres
    row, col = t.ignore[py], t.ignore[:, px]
    assert np.nonzero(row)[0].tolist() == list(range(14, 20)) + list(range(33, 39))
    assert np.nonzero(col)[0].tolist() == list(range(10, 14)) + list(range(23, 27))
    # the ring gets no target and nothing beyond it either; inside the lesion nothing is ignored
    assert (t.heat[0][t.ignore] == 0).all()
    assert not t.ignore[t.heat[0] > 0].any()
    ref_ring, ref_inside = _ring_reference(box, (50, 60))
    np.testing.assert_array_equal(t.ignore, ref_ring)
    beyond = ~ref_ring & ~ref_inside
    assert (t.heat[0][beyond] == 0).all() and not t.ignore[beyond].any()
    # even sizes too: the whole mask equals the definition
    for b in [(10, 10, 30, 22), (3.0, 4.0, 11.0, 9.0)]:
        t = heat_targets([b], [0], (40, 40), 1)
        np.testing.assert_array_equal(t.ignore, _ring_reference(b, (40, 40))[0])


def test_radii_at_centres_equal_box_half_sizes():
    boxes = [(4, 6, 15, 13), (30, 20, 46, 44)]
    t = heat_targets(boxes, [0, 1], (64, 64), 2)
    assert t.radius_mask.sum() == 2
    for (x0, y0, x1, y1), (px, py, _) in zip(boxes, t.centres):
        assert t.radii[:, py, px].tolist() == [(x1 - x0) / 2, (y1 - y0) / 2]
    assert (t.radii[:, ~t.radius_mask] == 0).all()


def test_overlapping_lesions_take_the_maximum_and_are_never_blind():
    a, b = (10, 10, 30, 26), (22, 14, 40, 32)
    both = heat_targets([a, b], [1, 1], (48, 48), 2)
    ta, tb = heat_targets([a], [1], (48, 48), 2), heat_targets([b], [1], (48, 48), 2)
    np.testing.assert_array_equal(both.heat, np.maximum(ta.heat, tb.heat))
    inside_any = (ta.heat[1] > 0) | (tb.heat[1] > 0)
    np.testing.assert_array_equal(both.ignore, (ta.ignore | tb.ignore) & ~inside_any)
    # different classes: separate channels, and one lesion's interior is not blind for the other's ring
    mixed = heat_targets([a, b], [0, 1], (48, 48), 2)
    np.testing.assert_array_equal(mixed.heat[0], ta.heat[1])
    np.testing.assert_array_equal(mixed.heat[1], tb.heat[1])
    assert not mixed.ignore[mixed.heat.max(0) > 0].any()


def test_boxes_at_the_image_border():
    shape = (32, 32)
    for box in [(0, 0, 9, 7), (25, 20, 32, 32), (-4, 10, 6, 20)]:
        t = heat_targets([box], [0], shape, 1)
        (px, py, _), = t.centres
        assert 0 <= px < 32 and 0 <= py < 32 and t.heat[0, py, px] == 1.0
        ref_ring, _ = _ring_reference(box, shape)
        np.testing.assert_array_equal(t.ignore, ref_ring)  # clipped, not wrapped
        assert t.heat.shape == (1, 32, 32) and np.isfinite(t.heat).all()


def test_box_helpers():
    # pad: a 200x100 image into 64 px: scale 0.32, vertical offset 16; then a stride-4 grid
    out = transform_boxes([(50, 25, 150, 75)], 200, 100, 64, "pad", 4)
    assert out == [pytest.approx((4.0, 6.0, 12.0, 10.0))]
    out = transform_boxes([(0, 0, 200, 100)], 200, 100, 64, "stretch", 1)
    assert out == [pytest.approx((0, 0, 64, 64))]
    bx, lb = boxes_of([{"x0": 1, "y0": 2, "x1": 3, "y1": 4, "label": None}], default_label=2)
    assert bx == [(1.0, 2.0, 3.0, 4.0)] and lb == [2]
    with pytest.raises(ValueError):
        heat_targets([(0, 0, 4, 4)], [5], (8, 8), 3)


# --------------------------------------------------------------------------------------------
# losses and networks


def test_focal_loss_ignores_the_ring_and_radius_l1_only_at_centres():
    import torch

    from medray.methods.skin.heatmap import focal_loss, radius_l1

    t = heat_targets([(6, 6, 17, 15)], [0], (24, 24), 2)
    heat = torch.from_numpy(t.heat)[None]
    ign = torch.from_numpy(t.ignore)[None]
    logits = torch.zeros(1, 2, 24, 24, requires_grad=True)
    loss = focal_loss(logits, heat, ign)
    loss.backward()
    g = logits.grad[0]
    assert (g[:, t.ignore] == 0).all()
    assert (g[:, ~t.ignore].abs().sum() > 0)
    # predicting the target lowers the loss; predicting background on the lesion raises it
    good = torch.logit(heat.clamp(1e-3, 1 - 1e-3))
    assert focal_loss(good, heat, ign) < loss
    # a ring pixel with any prediction changes nothing
    bad_ring = good.clone()
    bad_ring[0, :, torch.from_numpy(t.ignore)] = 8.0
    assert focal_loss(bad_ring, heat, ign) == pytest.approx(float(focal_loss(good, heat, ign)))
    pred = torch.zeros(1, 2, 24, 24, requires_grad=True)
    rt = torch.from_numpy(t.radii)[None]
    lr = radius_l1(pred, rt, torch.from_numpy(t.radius_mask)[None])
    lr.backward()
    assert lr.item() == pytest.approx((5.5 + 4.5) / 2)
    assert (pred.grad[0][:, ~t.radius_mask] == 0).all()


def test_heatmap_net_shapes_and_classifier_zero_pads_the_prior():
    import torch

    from medray.methods.skin.heatmap import HeatmapNet, inflate_state, skin_effnetv2

    net = HeatmapNet("test_convnext", n_classes=3, head_channels=8, out_stride=4).eval()
    out = net(torch.zeros(2, 3, 64, 64))
    assert out["heat"].shape == (2, 3, 16, 16) and out["radius"].shape == (2, 2, 16, 16)
    c3 = skin_effnetv2(num_classes=4, in_chans=3, width=0.3, depth=0.25).eval()
    c4 = skin_effnetv2(num_classes=4, in_chans=4, width=0.3, depth=0.25).eval()
    c4.load_state_dict(inflate_state(c3.state_dict(), c4))
    x = torch.randn(2, 3, 40, 40)
    # the stage-5 net starts as stage 3: the new channel's weights are zero
    torch.testing.assert_close(c4(x), c3(x))
    torch.testing.assert_close(c4(torch.cat([x, torch.zeros(2, 1, 40, 40)], 1)), c4(x))


def test_compound_scaling_follows_the_budget():
    from medray.methods.skin.heatmap import compound_scale

    kw = dict(base_resolution=96, phi_min=-7, phi_max=-5, phi_step=1.0)
    small = compound_scale(5, 0.6, 1.0, **kw)
    big = compound_scale(5, 5.0, 1.0, **kw)
    assert small.phi < big.phi and small.params_m <= 0.6
    assert big.width > small.width and big.depth > small.depth and big.resolution > small.resolution
    with pytest.raises(ConfigError, match="classifier.budget"):
        compound_scale(5, 0.01, 1.0, **kw)


# --------------------------------------------------------------------------------------------
# ranked class-proportional sampling


def test_quotas_follow_the_clean_proportions_within_one_sample():
    clean = [57, 20, 11, 7, 5]
    q = class_quotas(clean, [1000] * 5, total=73)
    assert q.sum() == 73
    exact = np.asarray(clean) / sum(clean) * 73
    assert (np.abs(q - exact) < 1).all(), (q, exact)
    # a scarce class shrinks the total so every class keeps its share
    q = class_quotas(clean, [1000, 1000, 1000, 1000, 3], total=None)
    exact = np.asarray(clean) / sum(clean) * q.sum()
    assert q[4] <= 3 and (np.abs(q - exact) < 1).all() and q.sum() >= 50
    # a class with no pseudo-label at all is left out; the others keep their relative shares
    q = class_quotas([2, 1, 1], [0, 50, 50], total=10)
    assert q.tolist() == [0, 5, 5]
    assert class_quotas([1, 1], [0, 0], total=4).sum() == 0
    with pytest.raises(ValueError):
        class_quotas([0, 0], [3, 3])


def test_ranked_sample_keeps_the_most_confident_of_each_class():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, 200)
    prob = rng.random(200)
    q = np.array([10, 5, 3])
    idx = ranked_sample(pred, prob, q)
    assert np.bincount(pred[idx], minlength=3).tolist() == q.tolist()
    for k in range(3):
        kept = prob[idx][pred[idx] == k]
        rest = np.setdiff1d(np.nonzero(pred == k)[0], idx)
        assert kept.min() >= prob[rest].max()


# --------------------------------------------------------------------------------------------
# config


def _job_dict(manifest: str, storage_path: str, catalog: str | None = None) -> dict:
    return {
        "method": "skin",
        "data": {"manifest": manifest, "decode_batch_size": 8},
        "regressor": {"backbone": "test_convnext", "image_size": 64, "head_channels": 16, "out_stride": 4,
                      "optim": {"epochs": 2, "batch_size": 8, "lr": 0.003}},
        "foreground": {"downsample": 8, "batch_size": 16, "num_cpus": 0.25},
        "classifier": {"budget": {"max_params_m": 1.0, "max_gflops": 0.05}, "base_resolution": 96,
                       "phi_min": -6, "phi_max": -6, "phi_step": 1.0,
                       "optim": {"epochs": 2, "batch_size": 8, "lr": 0.003}, "predict_batch_size": 16},
        "second": {"q": 0.5, "optim": {"epochs": 2, "batch_size": 8, "lr": 0.002}},
        "evaluate": {"heatmap_examples": 2},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
        "run": {"name": "skin", "storage_path": storage_path, "catalog": catalog, "checkpoints_to_keep": 1},
    }


def test_config_errors_are_clear(tmp_path):
    d = _job_dict("m.parquet", str(tmp_path))
    with pytest.raises(ConfigError, match="regressor.optim"):
        parse_job({**d, "optim": {"lr": 0.1}}, source="skin.yaml")
    with pytest.raises(ConfigError, match="foreground.downsample"):
        parse_job({**d, "foreground": {"downsample": 7}}, source="skin.yaml")
    with pytest.raises(ConfigError, match="did you mean"):
        parse_job({**d, "second": {"qq": 0.5}}, source="skin.yaml")


def test_wrong_manifest_task_is_a_clear_error(tmp_path):
    from medray.data.synth import synth
    from medray.methods.skin import stages

    m = synth("rop", 4, str(tmp_path / "rop.parquet"), size=32)["manifest"]
    job = parse_job(_job_dict(m, str(tmp_path / "runs")), source="t")
    with pytest.raises(MedrayError, match="needs task 'skin'"):
        stages.resolve_classes(job)
    job = parse_job(_job_dict(str(tmp_path / "missing.parquet"), str(tmp_path / "runs")), source="t")
    with pytest.raises(MedrayError, match="missing.parquet"):
        stages.resolve_classes(job)


# --------------------------------------------------------------------------------------------
# the workflow end to end


def _table(uri: str):
    import pyarrow.parquet as pq

    from medray import storage

    fs, path = storage.pyarrow_filesystem(uri)
    return pq.read_table(path, filesystem=fs)


@pytest.mark.slow
def test_five_stages_on_s3_two_workers_end_to_end_then_rerun_skips(ray_cluster, s3_bucket, cli):
    """The whole workflow with everything on the S3 endpoint: generated images and manifest, every
    stage's artifacts, the catalogue; 2 CPU workers for the training stages."""
    import io

    from PIL import Image

    from medray import storage
    from medray.catalog import Catalog
    from medray.data.synth import synth
    from medray.inference.predictor import load_predictor
    from medray.training.launcher import run_job

    skin_set = synth("skin", 72, f"{s3_bucket}/data/skin.parquet", seed=3, size=64, n_classes=3, box_frac=0.3,
                     clean_frac=0.35, noise=0.3, val=0.2, test=0.2)
    assert skin_set["manifest"].startswith("s3://")
    job = parse_job(_job_dict(skin_set["manifest"], f"{s3_bucket}/runs", f"{s3_bucket}/catalog"), source="t")
    assert job.scaling.num_workers == 2
    out = run_job(job)
    run = f"{s3_bucket}/runs/skin"
    assert out["ran"] == ["1_regressor", "2_foreground", "3_classifier", "4_sample", "5_classifier", "evaluate"]
    for st in out["ran"]:
        assert storage.exists(f"{run}/{st}/_SUCCESS.json"), st
    # stage artifacts
    heat = _table(f"{run}/2_foreground/heatmaps")
    assert heat.num_rows == sum(storage.read_json(f"{run}/counts.json")["full_train"])
    png = Image.open(io.BytesIO(heat.column("heatmap")[0].as_py()))
    assert png.mode == "L" and png.size == (8, 8)  # one channel at 1/8 of 64 px
    pseudo = _table(f"{run}/3_classifier/pseudo")
    assert {"pred", "prob", "probs", "heatmap"} <= set(pseudo.column_names)
    sample = _table(f"{run}/4_sample/rows").to_pandas()
    info4 = storage.read_json(f"{run}/4_sample/_SUCCESS.json")
    assert len(sample) == info4["total"] == sum(info4["quotas"])
    assert np.bincount(sample["pred"], minlength=3).tolist() == info4["quotas"]
    p = pseudo.to_pandas()
    for k, q in enumerate(info4["quotas"]):
        if q and (p["pred"] == k).sum() > q:  # the kept ones are the most confident of the class
            kept = sample.loc[sample["pred"] == k, "prob"].min()
            dropped = p.loc[(p["pred"] == k) & ~p["image"].isin(sample["image"]), "prob"].max()
            assert kept >= dropped
    for png_name in ("4_sample/class_balance.png", "evaluate/confusion_stage3.png",
                     "evaluate/confusion_stage5.png", "evaluate/heatmaps.png", "1_regressor/curves.png"):
        assert len(storage.read_bytes(f"{run}/{png_name}")) > 2000, png_name
    metrics = storage.read_json(f"{run}/evaluate/metrics.json")
    assert {"stage3", "stage5"} <= set(metrics["sets"]["clean_test"])
    assert "full_test_true_labels" in metrics["sets"]
    # both published on S3; their predictors work from the catalogue
    cat = Catalog(f"{s3_bucket}/catalog")
    loc, clf = cat.get("skin_localiser"), cat.get("skin")
    assert (loc.task, clf.task) == ("skin_heatmap", "skin_classify")
    img = np.asarray(Image.open(io.BytesIO(storage.read_bytes(p["image"][0]))).convert("RGB"))
    r = load_predictor(loc, cat, device="cpu").predict([img])[0]
    assert np.asarray(r["heatmap"]).shape == (16, 16) and r["overlay"][:4] == b"\x89PNG"
    assert all({"x", "y", "class", "score", "rx", "ry"} <= set(pk) for pk in r["peaks"])
    c = load_predictor(clf, cat, device="cpu").predict([img])[0]
    assert set(c["probs"]) == set(skin_set["classes"]) and abs(sum(c["probs"].values()) - 1) < 1e-3

    # the same job again: every stage is skipped, nothing is re-published
    out2 = run_job(job)
    assert out2["ran"] == [] and len(out2["skipped"]) == 6
    assert cat.versions("skin") == [1]
