"""oct_layers (METHODS.md §2): windows, padding, stitched inference, loss, thickness, config errors
(fast, no Ray), and one end-to-end Ray Train run on generated layered B-scans (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medray.config import parse_job
from medray.errors import ConfigError
from medray.methods.oct_layers import infer, losses, windows
from medray.methods.oct_layers.windows import IGNORE, next_pow2, window_starts


# ------------------------------------------------------------------------------------ windows


@pytest.mark.parametrize("window,stride", [(32, 24), (128, 64), (64, 1), (16, 15)])
def test_windows_cover_every_column_exactly(window, stride):
    for width in list(range(1, 300, 7)) + [window, window + 1, 4 * stride + 1, 512, 768, 1024]:
        starts = window_starts(width, window, stride)
        covered = np.zeros(max(width, window), int)
        for s in starts:
            covered[s:s + window] += 1
        assert (covered[:width] >= 1).all(), (width, starts)  # union = full width
        assert starts[0] == 0 and starts == sorted(set(starts))
        assert starts[-1] + window == max(width, window)  # last window right-aligned
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_stride_must_be_smaller_than_window():
    with pytest.raises(ValueError, match="stride"):
        window_starts(100, 32, 32)
    job = _job_dict("/x.parquet")
    job["data"]["stride"] = 32
    with pytest.raises(ConfigError, match="data.*stride=32 must be smaller than window=32"):
        parse_job(job, source="jobs/oct.yaml")


def test_window_must_fit_the_encoder_depth():
    job = _job_dict("/x.parquet")
    job["data"].update(window=36, stride=24)
    with pytest.raises(ConfigError, match="data.window=36 must be a multiple of 2\\*\\*encoder_depth=8"):
        parse_job(job, source="jobs/oct.yaml")


def test_pad_height_to_next_power_of_two_and_back_is_lossless():
    rng = np.random.default_rng(0)
    assert [next_pow2(n) for n in (1, 2, 3, 64, 65, 496, 512, 513)] == [1, 2, 4, 64, 128, 512, 512, 1024]
    img = rng.integers(0, 256, (496, 771, 1), dtype=np.uint8)
    mask = rng.integers(0, 15, (496, 771), dtype=np.uint8)
    pi = windows.pad_height(img)
    pm = windows.pad_height(mask, value=IGNORE)
    assert pi.shape == (512, 771, 1) and pm.shape == (512, 771)
    assert (pm[496:] == IGNORE).all() and (pi[496:] == 0).all()
    assert np.array_equal(windows.crop(pi, 496, 771), img)
    assert np.array_equal(windows.crop(pm, 496, 771), mask)


def _write_scan(tmp_path, h, w, seed=0):
    from medray.data import imageio

    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    bounds = np.sort(rng.integers(1, h - 1, 3))
    for k, b in enumerate(bounds):
        mask[b:] = k + 1
    img = (mask * 50 + rng.integers(0, 20, (h, w))).astype(np.uint8)
    ip, mp = tmp_path / f"s{w}.png", tmp_path / f"s{w}_mask.png"
    ip.write_bytes(imageio.encode_png(img))
    mp.write_bytes(imageio.encode_png(mask))
    return str(ip), str(mp), img, mask


def test_window_rows_one_scan_to_many_windows_reassembles_losslessly(tmp_path):
    """The Ray Data map_batches function: a B-scan 1 px wider than a multiple of the stride (97 =
    4 x 24 + 1: windows at 0, 24, 48 and the right-aligned 65), a narrow one (20 < W) and a 128-wide one; non-power-of-two height 72."""
    scans = [_write_scan(tmp_path, 72, w, seed=w) for w in (97, 20, 128)]
    batch = {"image": np.array([s[0] for s in scans], dtype=object),
             "mask": np.array([s[1] for s in scans], dtype=object),
             "pid": np.array(["a", "b", "c"], dtype=object)}
    out = windows.window_rows(batch, window=32, stride=24, pad_height_to=128, keep=("pid",))
    counts = [len(window_starts(w, 32, 24)) for w in (97, 20, 128)]
    assert counts == [4, 1, 5] and out["image"].shape == (sum(counts), 128, 32, 1)
    assert out["mask"].shape == (sum(counts), 128, 32) and out["mask"].dtype == np.uint8
    assert list(out["pid"]) == ["a"] * counts[0] + ["b"] * counts[1] + ["c"] * counts[2]
    i = 0
    for (_, _, img, mask), n in zip(scans, counts):
        h, w = mask.shape
        rec_m = np.full((128, max(w, 32)), 0, np.int32)
        rec_i = np.zeros((128, max(w, 32)), np.int32)
        for j in range(i, i + n):
            x0 = int(out["x0"][j])
            rec_m[:, x0:x0 + 32] = out["mask"][j]
            rec_i[:, x0:x0 + 32] = out["image"][j, ..., 0]
        assert np.array_equal(rec_m[:h, :w], mask) and np.array_equal(rec_i[:h, :w], img)
        assert (rec_m[h:] == IGNORE).all() and (rec_m[:, w:] == IGNORE).all()
        i += n


# ------------------------------------------------------------------------------------ inference


class OneHotOfInput(torch.nn.Module):
    """Identity-like segmentation model: the input holds class ids; logit_k = -(x - k)^2."""

    def __init__(self, n):
        super().__init__()
        self.k = torch.arange(n, dtype=torch.float32).view(1, n, 1, 1)
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return -((x[:, :1] - self.k) ** 2)


@pytest.mark.parametrize("h,w", [(72, 97), (496, 768), (50, 20), (64, 128), (37, 1025)])
@pytest.mark.parametrize("sigma", [0.25, 0.0])
def test_stitched_inference_of_identity_like_model_reproduces_mask(h, w, sigma):
    rng = np.random.default_rng(h * w)
    mask = rng.integers(0, 6, (h, w)).astype(np.uint8)
    model = OneHotOfInput(6)
    x = torch.from_numpy(mask.astype(np.float32))[None]
    pred = infer.predict_mask(model, x, window=32, stride=24, sigma=sigma)
    assert pred.shape == (h, w) and np.array_equal(pred, mask)
    assert model.calls == [len(window_starts(w, 32, 24))]  # ALL windows of the scan in one batch


def test_gaussian_blend_weights_centre_more_and_keep_constants():
    g = infer.gaussian_weights(64, 0.25)
    assert g.argmax() in (31, 32) and g[0] < g[32] and np.allclose(g, g[::-1])
    starts = window_starts(100, 32, 24)
    logits = torch.full((len(starts), 3, 8, 32), 2.5)
    out = infer.blend(logits, starts, (8, 100))
    assert out.shape == (3, 8, 100) and torch.allclose(out, torch.tensor(2.5))


def test_thickness_pixels_and_micrometres():
    mask = np.zeros((10, 4), np.uint8)
    mask[2:5] = 1  # 3 px of class 1 everywhere
    mask[5:, :2] = 2  # 5 px of class 2 in two columns
    t = infer.thickness(mask, ["bg", "a", "b"], axial_um=3.9)
    assert t["px"]["a"] == [3, 3, 3, 3] and t["px"]["b"] == [5, 5, 0, 0]
    assert t["um"]["a"][0] == pytest.approx(11.7) and t["mean_um"]["b"] == pytest.approx(2.5 * 3.9)
    assert "bg" not in t["px"] and "um" not in infer.thickness(mask, ["bg", "a", "b"])


# ------------------------------------------------------------------------------------ loss, models


def test_loss_ignores_padded_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 16, 8)
    y = torch.randint(0, 4, (2, 16, 8))
    y[:, 12:] = IGNORE
    a = losses.ce_dice_loss(logits, y)
    logits2 = logits.clone()
    logits2[:, :, 12:] = torch.randn(2, 4, 4, 8) * 50  # anything in the padding
    b = losses.ce_dice_loss(logits2, y)
    assert torch.isfinite(a) and torch.allclose(a, b)
    perfect = torch.nn.functional.one_hot(torch.where(y == IGNORE, 0, y), 4).permute(0, 3, 1, 2).float() * 40
    assert float(losses.ce_dice_loss(perfect, y)) < 0.01 < float(a)


def test_candidates_expose_the_knobs():
    from medray.models import create_model

    x = torch.randn(1, 1, 64, 32)
    sizes = {}
    for name in ("oct_unet", "oct_unetplusplus", "oct_fpn", "oct_deeplabv3plus"):
        for depth, ch, cpb in ((3, 16, 1), (4, 32, 3)):
            m = create_model(name, num_classes=5, in_chans=1, encoder="tu-test_resnet", encoder_depth=depth,
                             decoder_channels=ch, convs_per_block=cpb).eval()
            assert m(x).shape == (1, 5, 64, 32)
            sizes[(name, depth)] = sum(p.numel() for p in m.parameters())
        assert sizes[(name, 4)] > sizes[(name, 3)]
    with pytest.raises(ConfigError, match="encoder_depth=6"):
        create_model("oct_unet", num_classes=3, in_chans=1, encoder_depth=6)


# ------------------------------------------------------------------------------------ data errors


def _job_dict(manifest, tmp="/tmp/x", **data):
    return {"method": "oct_layers",
            "model": {"name": "oct_tiny", "in_chans": 1, "kwargs": {"decoder_channels": 16}},
            "data": {"manifests": [manifest], "window": 32, "stride": 24, "decode_batch_size": 4,
                     "eval_max_scans": 6, "plot_scans": 2, **data},
            "optim": {"epochs": 2, "batch_size": 8, "lr": 0.01, "warmup_epochs": 0},
            "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
            "run": {"name": "oct", "storage_path": f"{tmp}/runs", "metric": "val_miou", "mode": "max",
                    "checkpoints_to_keep": 1}}


def test_wrong_manifest_task_is_a_clear_error(tmp_path):
    from medray.data import manifest
    from medray.methods.oct_layers import build_datasets

    uri = str(tmp_path / "f.parquet")
    manifest.write_manifest([dict(image="/a.jpg", patient_id="p", eye="left", width=8, height=8, split="train",
                                  dataset="t", label=0)], uri, "fundus_disease", ["a", "b"])
    job = parse_job(_job_dict(uri))
    with pytest.raises(ConfigError, match=r"f\.parquet is a 'fundus_disease' manifest; oct_layers needs task 'oct_seg'"):
        build_datasets(job)


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def oct_small(tmp_path_factory):
    from medray.data.synth import synth

    out = tmp_path_factory.mktemp("oct") / "oct.parquet"
    synth("oct", 24, str(out), size=72, widths=[80, 97, 128], scans_per_eye=2, seed=0)
    return str(out)


@pytest.mark.slow
def test_train_two_workers_windows_in_pipeline_publish_predict(ray_cluster, oct_small, tmp_path):
    from medray.catalog import Catalog
    from medray.inference.predictor import load_predictor
    from medray.training.launcher import run_job

    data = _job_dict(oct_small, str(tmp_path))
    data["run"]["catalog"] = str(tmp_path / "catalog")
    out = run_job(parse_job(data))
    run = tmp_path / "runs" / "oct"
    summary = json.loads((run / "summary.json").read_text())
    meta = summary["meta"]
    # split by patient first (manifest split column), then windowed in the Ray Data pipeline
    assert meta["pad_height"] == 128 and meta["max_height"] == 72
    assert meta["train_rows"] > meta["train_scans"] >= 10
    hist = summary["history"]
    assert len(hist) == 2 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert 0 < summary["best_metrics"]["val_miou"] <= 1 and "val_iou_rpe" in summary["best_metrics"]
    test = json.loads((run / "test_report.json").read_text())
    assert test["scans"] >= 1 and 0 < test["test_miou"] <= 1 and "rnfl" in test["thickness_mae"]
    assert (run / "overlays.png").stat().st_size > 5000 and (run / "thickness.png").stat().st_size > 5000
    assert out["published"] == "oct:1"
    cat = Catalog(str(tmp_path / "catalog"))
    card = cat.get("oct")
    assert card.task == "oct_seg" and card.preprocessing["window"] == 32 and "rpe" in card.extra["iou_table"]
    pred = load_predictor(card, cat, device="cpu")
    from medray.data import imageio, manifest

    row = next(r for b in manifest.iter_batches(oct_small) for r in b.to_pylist() if r["width"] == 97)
    res = pred.predict([imageio.read_image(row["image"], mode="L")], axial_um=row["axial_um"])[0]
    assert res["mask"].shape == (72, 97) and len(res["thickness"]["um"]["rpe"]) == 97


def test_predictor_from_catalogue_whole_scan_any_width(tmp_path):
    """A published oct_seg card -> load_predictor -> mask of the scan's own size + thickness (no Ray)."""
    from safetensors.torch import save as st_save

    from medray.catalog import Catalog
    from medray.inference.predictor import load_predictor
    from medray.methods.oct_layers import Config, build_model, card_for, preprocessing
    from medray.models.registry import state_dict_for_export

    cfg = Config.model_validate(_job_dict("/x.parquet"))
    classes = ["background", "a", "b", "c"]
    card = card_for(cfg, {"classes": classes, "preprocessing": preprocessing(cfg, 128)},
                    {"val_miou": 0.5, "val_iou_a": 0.4})
    weights = st_save(state_dict_for_export(build_model(cfg, len(classes)).eval()))
    cat = Catalog(str(tmp_path / "cat"))
    cat.publish(card, {"weights": weights})
    got = cat.get("oct")
    assert got.task == "oct_seg" and got.extra["iou_table"]["a"] == 0.4
    pred = load_predictor(got, cat, device="cpu")
    _, _, img, _ = _write_scan(tmp_path, 72, 97)
    res = pred.predict([img, img[:, :20]], axial_um=[3.9, None])
    assert res[0]["mask"].shape == (72, 97) and res[1]["mask"].shape == (72, 20)
    assert len(res[0]["thickness"]["um"]["a"]) == 97 and "um" not in res[1]["thickness"]
    assert sum(res[0]["class_pixels"].values()) == 72 * 97


def test_overlays_show_the_scans_with_the_most_labelled_structure():
    """Duke DME: most held-out B-scans have no fluid; the overlay must show those that do."""
    from medray.methods.oct_layers import keep_most_structured, structure_score

    empty = np.zeros((8, 8), np.uint8)
    small_cyst, big_cyst = empty.copy(), empty.copy()
    small_cyst[2:4, 2:4] = 1
    big_cyst[1:6, 1:6] = 1
    scans = [empty, small_cyst, empty, big_cyst]
    kept: list = []
    for i, m in enumerate(scans):  # a stream, as evaluate_scans reads held-out scans
        keep_most_structured(kept, 4, i, m, 2, i)
    assert [x[2] for x in kept] == [3, 1, 0, 2]  # fluid first (more fluid first), then the empty scans in their order
    kept = []
    for i, m in enumerate(scans):
        keep_most_structured(kept, 2, i, m, 2, i)
    assert [x[2] for x in kept] == [3, 1]
    assert structure_score(empty, 2) == (1, 64) and structure_score(small_cyst, 2) == (2, 4)
