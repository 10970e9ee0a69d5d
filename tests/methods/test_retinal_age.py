"""retinal_age (METHODS.md §1): the offset rule and the loss on their own (fast, no Ray), then the whole
job end to end on generated fundus images (real Ray cluster: classifier -> responses -> offsets ->
training -> evaluation -> catalogue)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medray.methods.retinal_age import losses, offsets
from medray.methods.retinal_age.offsets import OffsetSpec
from medray.methods.retinal_age.study import STUDY, age_job, classifier_job
from medray.methods.retinal_age.study import make_data as make_age_data

# --------------------------------------------------------------------------------------------
# offsets


def _worked_example_data():
    """Ages 27..40, 40 samples each, responses 0..0.195 (mean 0.0975) shifted up by 0.05 per year, so
    M_28 = 0.1475, M_29 = 0.1975, M_30 = 0.2475. A 27-year-old with r = 0.22 is above T_27 (0.19, the
    2nd highest of 40 at p = 5 %), above M_28 and M_29 and below M_30: the search stops at 30."""
    ages, rs = [], []
    for a in range(27, 41):
        base = np.arange(40) / 200.0 + 0.05 * (a - 27)
        ages += [a + 0.5] * 40
        rs += list(base)
    return np.array(ages), np.array(rs)


def test_seed_worked_example_dy_3():
    ages, rs = _worked_example_data()
    spec = OffsetSpec(p=0.05)
    age = np.append(ages, 27.3)
    r = np.append(rs, 0.22)
    dy, T, M, stats = offsets.compute_offsets(age, r, spec)
    i = len(age) - 1
    m = {a: stats.search_mean[a - 27] for a in range(27, 41)}
    assert r[i] >= T[i]  # r >= T_27
    assert r[i] > m[28] and r[i] > m[29] and r[i] < m[30], (r[i], m[28], m[29], m[30])
    assert dy[i] == 3


def test_still_above_mean_ten_ages_later_is_capped_at_10():
    ages, rs = _worked_example_data()
    age = np.append(ages, 27.0)
    r = np.append(rs, 5.0)  # above every mean
    dy, *_ = offsets.compute_offsets(age, r, OffsetSpec(p=0.05, past_oldest="cap"))
    assert dy[-1] == 10
    dy, *_ = offsets.compute_offsets(age, r, OffsetSpec(p=0.05))  # 13 ages above: still capped
    assert dy[-1] == 10
    spec = OffsetSpec(p=0.05, max_offset=20)  # past the oldest age (40): stops there
    dy, *_ = offsets.compute_offsets(age, r, spec)
    assert dy[-1] == 40 - 27


def test_below_threshold_gives_zero():
    ages, rs = _worked_example_data()
    dy, T, M, _ = offsets.compute_offsets(ages, rs, OffsetSpec(p=0.05))
    below = rs < T
    assert below.sum() > 0.9 * len(rs)
    assert (dy[below] == 0).all()
    young = ages < 40  # the oldest group has nowhere to go (past_oldest="stop")
    assert (dy[~below & young] >= 1).all()  # every flagged sample below the oldest age moves >= 1 year
    assert (dy[~young] == 0).all()


def test_top_p_threshold_is_the_250th_highest_of_10000():
    rng = np.random.default_rng(0)
    r = rng.random(10_000)
    age = np.full(10_000, 50.0)
    stats = offsets.group_stats(offsets.age_groups(age), r, OffsetSpec(p=0.025))
    assert stats.top_k[0] == 250
    assert stats.threshold[0] == np.sort(r)[::-1][249]
    assert (r >= stats.threshold[0]).sum() == 250
    assert offsets.top_k_of(10_000, 0.05) == 500


def test_open_decisions_missing_ages_small_groups():
    # ages 30 and 32 present (40 each), 31 missing
    r30 = np.linspace(0, 0.4, 40)
    r32 = np.linspace(0.4, 0.8, 40)  # mean 0.6
    age = np.concatenate([np.full(40, 30.2), np.full(40, 32.2), [30.0]])
    r = np.concatenate([r30, r32, [0.45]])
    # interpolate: M_31 = (0.2 + 0.6) / 2 = 0.4 -> 0.45 > 0.4, stops at 32 (0.45 < 0.6) -> dy 2
    dy, *_ = offsets.compute_offsets(age, r, OffsetSpec(p=0.05))
    assert dy[-1] == 2
    dy, *_ = offsets.compute_offsets(age, r, OffsetSpec(p=0.05, missing_age="stop"))
    assert dy[-1] == 1
    dy, *_ = offsets.compute_offsets(age, r, OffsetSpec(p=0.05, missing_age="skip"))
    assert dy[-1] == 2
    # a small group (5 rows) pools its neighbours for T; no_shift leaves it alone
    age2 = np.concatenate([np.full(40, 40.5), np.full(5, 41.5), np.full(40, 42.5)])
    r2 = np.concatenate([np.linspace(0, 0.5, 40), [0.1, 0.2, 0.3, 0.4, 0.9], np.linspace(0.2, 0.7, 40)])
    st = offsets.group_stats(offsets.age_groups(age2), r2, OffsetSpec(p=0.05))
    assert st.pooled[1] and not st.pooled[0]
    assert st.top_k[1] == 5  # ceil(0.05 * 85)
    assert st.threshold[1] == np.sort(r2)[::-1][4]
    st_keep = offsets.group_stats(offsets.age_groups(age2), r2, OffsetSpec(p=0.05, small_group="keep"))
    assert st_keep.threshold[1] == 0.9
    dy, *_ = offsets.compute_offsets(age2, r2, OffsetSpec(p=0.05, small_group="no_shift"))
    assert (dy[40:45] == 0).all()


def test_offsets_scale_to_a_million_rows_vectorised():
    rng = np.random.default_rng(1)
    n = 1_000_000
    age = rng.uniform(20, 80, n)
    r = np.clip(rng.beta(2, 8, n) + (age - 20) / 200, 0, 1)
    dy, T, M, stats = offsets.compute_offsets(age, r, OffsetSpec())
    share = (dy > 0).mean()
    assert 0.02 <= share <= 0.03, share  # ~2.5 % of every group flagged
    assert dy.max() <= 10
    # the rule, checked row by row on a sample against a direct implementation
    idx = rng.choice(n, 300, replace=False)
    m = stats.search_mean
    for i in idx:
        a = int(np.floor(age[i])) - 20
        if r[i] < stats.threshold[a]:
            want = 0
        else:
            want = None
            for k in range(1, 11):
                if a + k >= len(m):
                    want = len(m) - 1 - a
                    break
                if r[i] < m[a + k]:
                    want = k
                    break
            want = 10 if want is None else want
        assert dy[i] == want, (i, age[i], r[i], dy[i], want)


def test_offsets_table_uses_train_split_stats_and_audits():
    import pyarrow as pa

    ages, rs = _worked_example_data()
    n = len(ages)
    t = pa.table({"age": ages, "r": rs, "split": ["train"] * n})
    extra = pa.table({"age": [27.3, 27.3, None], "r": [0.22, 0.0, 0.9], "split": ["test", "test", "test"]})
    audit, stats = offsets.offsets_table(pa.concat_tables([t, extra]), OffsetSpec(p=0.05))
    assert {"age_group", "T_a", "M_a", "flagged", "dy"} <= set(audit.column_names)
    dy = audit["dy"].to_pylist()
    assert dy[n:] == [3, 0, 0]  # test rows use the train split's T/M; a null age is never shifted
    with pytest.raises(Exception, match="no rows"):
        offsets.offsets_table(t, OffsetSpec(stats_splits=["nothing"]))
    # a missing age that arrives as NaN (a null that went through numpy in stage 1) leaves as a null,
    # so training and evaluation, which drop rows without an age, drop it (a NaN target made NaN weights)
    nan_row = pa.table({"age": pa.array([float("nan")], pa.float32()), "r": [0.5], "split": ["train"]})
    t32 = t.set_column(0, "age", t["age"].cast(pa.float32()))
    audit, _ = offsets.offsets_table(pa.concat_tables([t32, nan_row]), OffsetSpec(p=0.05))
    assert audit["age"].type == pa.float32() and audit["age"].null_count == 1 and audit["age"][n].as_py() is None
    assert audit["dy"][n].as_py() == 0


# --------------------------------------------------------------------------------------------
# losses

BINS = losses.age_bins(20, 80)


def _logits_for(mean_age: float, n: int = 1, sharp: float = 2.0) -> torch.Tensor:
    return (-((BINS - mean_age) ** 2) / (2 * sharp**2)).repeat(n, 1).clone().requires_grad_(True)


def test_loss_cases_by_prediction_against_y_and_y_plus_dy():
    y = torch.tensor([40.0, 40.0, 40.0])
    dy = torch.tensor([5.0, 5.0, 5.0])
    r = torch.tensor([0.8, 0.8, 0.8])
    logits = torch.cat([_logits_for(35), _logits_for(42), _logits_for(52)]).detach().requires_grad_(True)
    t = losses.loss_terms(logits, y, dy, r, BINS, loss="shifted", sigma=2.0, lambda_1=0.2, lambda_2=0.05)
    assert t["case"].tolist() == [1, 2, 3]
    log_p = torch.log_softmax(logits, 1)
    yh, var = t["y_hat"], t["var"]
    ldl_y = losses.ldl(log_p, losses.gaussian_targets(y, BINS, 2.0))
    ldl_up = losses.ldl(log_p, losses.gaussian_targets(y + dy, BINS, 2.0))
    want = torch.stack([
        ldl_y[0] + 0.2 * (yh[0] - 40) ** 2 / 2 + 0.05 * var[0],
        0.2 * (1 - 0.8) * (yh[1] - 40) ** 2 / 2 + 0.05 * var[1],
        ldl_up[2] + 0.2 * (yh[2] - 45) ** 2 / 2 + 0.05 * var[2],
    ])
    assert torch.allclose(t["loss"], want)
    # inside [y, y + dy] the loss is cheaper than the unshifted one, and cheaper the surer the classifier
    mv = losses.loss_terms(logits, y, dy, r, BINS, loss="mean_variance")["loss"]
    assert t["loss"][1] < mv[1]
    t_unsure = losses.loss_terms(logits, y, dy, torch.tensor([0.1] * 3), BINS)["loss"]
    assert t["loss"][1] < t_unsure[1]
    # above y + dy the pull is towards y + dy, not y
    assert t["loss"][2] < mv[2]
    loss = t["loss"].mean()
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_dy_zero_is_exactly_mean_variance_plus_ldl():
    torch.manual_seed(0)
    logits = torch.randn(64, len(BINS), requires_grad=True)
    y = torch.empty(64).uniform_(20, 80)
    r = torch.rand(64)
    dy = torch.zeros(64)
    a = losses.retinal_age_loss(logits, y, dy, r, ages=BINS, loss="shifted")
    b = losses.retinal_age_loss(logits, y, dy, r, ages=BINS, loss="mean_variance")
    log_p = torch.log_softmax(logits, 1)
    p = log_p.exp()
    yh = p @ BINS
    var = (p * (BINS[None] - yh[:, None]) ** 2).sum(1)
    manual = (losses.ldl(log_p, losses.gaussian_targets(y, BINS, 2.0)) + 0.2 * (yh - y) ** 2 / 2 + 0.05 * var).mean()
    assert torch.equal(a, b)
    assert torch.allclose(a, manual)
    a.backward()
    assert torch.isfinite(logits.grad).all()


def test_baselines_and_targets():
    t = losses.gaussian_targets(torch.tensor([30.0, 200.0]), BINS, 2.0)
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert int(t[0].argmax()) == 10 and torch.isfinite(t).all()  # far outside the bins: still finite
    logits = _logits_for(50, n=2)
    y = torch.tensor([50.0, 60.0])
    l1 = losses.loss_terms(logits, y, None, None, BINS, loss="l1")
    assert torch.allclose(l1["loss"], (l1["y_hat"] - y).abs())
    ldl = losses.loss_terms(logits, y, None, None, BINS, loss="ldl")["loss"]
    assert ldl[0] < ldl[1]
    for name in losses.LOSSES:
        x = _logits_for(45, n=3)
        out = losses.retinal_age_loss(x, torch.tensor([40.0, 50.0, 60.0]), torch.tensor([0.0, 3.0, 10.0]),
                                      torch.tensor([0.1, 0.5, 0.9]), ages=BINS, loss=name)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(x.grad).all(), name


# --------------------------------------------------------------------------------------------
# evaluation


def test_age_metrics_and_plots(tmp_path):
    import pyarrow as pa

    from medray.methods.retinal_age import evaluate

    rng = np.random.default_rng(0)
    age = rng.uniform(40, 60, 400)
    disease = (rng.random(400) < 0.3).astype(int)
    pred = age + rng.normal(0, 2, 400) + 5 * disease
    r = np.clip(0.2 + 0.5 * disease + rng.normal(0, 0.1, 400), 0, 1)
    audit, stats = offsets.offsets_table(pa.table({"age": age, "r": r}), OffsetSpec(p=0.3, min_group_size=10))
    dy = np.array(audit["dy"].to_pylist())
    m = evaluate.age_metrics(age, pred, dy, disease)
    assert m["n"] == 400 and m["mae_dy0"] < m["mae"]
    # the constant reference: the median age's MAE (~5 y for ages uniform over 20 years), beaten here
    assert m["mae_constant"] == pytest.approx(np.abs(age - np.median(age)).mean()) and m["mae"] < m["mae_constant"]
    assert m["gap_disease"]["mean"] == pytest.approx(np.mean((pred - age)[disease == 1]))
    assert m["gap_disease_minus_healthy"] > 4 and m["gap_dy_pos"]["mean"] > m["gap_dy0"]["mean"]
    paths = evaluate.plot_offsets(audit, stats, str(tmp_path)) + evaluate.plot_predictions(
        age, pred, dy, str(tmp_path), disease=disease)
    assert [Path(p).name for p in paths] == ["offset_hist.png", "responses_by_age.png", "pred_vs_true.png",
                                             "age_gap.png"]
    assert all(Path(p).stat().st_size > 5000 for p in paths)


# --------------------------------------------------------------------------------------------
# config


def test_study_summary_pairs_each_seed_and_plots(tmp_path):
    from medray.methods.retinal_age import study

    def run(gap_d, gap_h, mae_h):
        return {"gap_disease": gap_d, "gap_healthy": gap_h, "gap_disease_minus_healthy": gap_d - gap_h,
                "mae_healthy": mae_h}

    rows = [{"seed": 0, "setup": dict(study.STUDY), "shifted": run(5.0, 1.0, 2.5), "baseline": run(2.0, 0.5, 3.0)},
            {"seed": 1, "setup": dict(study.STUDY), "shifted": run(3.0, 2.0, 3.2), "baseline": run(3.5, 1.0, 3.0)}]
    out = study.summarize(rows)
    d, dd, mh = out["diff_gap_disease"], out["diff_gap_disease_minus_healthy"], out["diff_mae_healthy"]
    assert out["seeds"] == [0, 1] and d["mean"] == pytest.approx(1.25) and (d["min"], d["max"]) == (-0.5, 3.0)
    assert d["std"] == pytest.approx(np.std([3.0, -0.5], ddof=1)) and d["wins"] == 1
    assert dd["mean"] == pytest.approx((2.5 - 1.5) / 2) and dd["wins"] == 1
    assert mh["lower"] == 1 and mh["max"] == pytest.approx(0.2)
    png = study.plot_pairs(rows, str(tmp_path / "pairs.png"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "pairs.png").stat().st_size > 5000


def test_config_validation_names_the_field(tmp_path):
    from medray.config import load_yaml, validate
    from medray.errors import ConfigError
    from medray.methods.retinal_age import Config

    def parse_job(d, source):  # the method's own Config (the job union would import every method)
        return validate(Config, d, source)

    base = {"method": "retinal_age", "data": {"manifests": ["m.parquet"]}, "responses": {"classifier": "c"}}
    job = parse_job(base, source="t")
    assert job.offsets.p == 0.025 and job.offsets.max_offset == 10 and job.head.loss == "shifted"
    with pytest.raises(ConfigError, match="head: age_max"):
        parse_job({**base, "head": {"age_min": 50, "age_max": 40}}, source="t")
    with pytest.raises(ConfigError, match="offsets.missing_age"):
        parse_job({**base, "offsets": {"missing_age": "guess"}}, source="t")
    with pytest.raises(ConfigError, match="head.loss"):
        parse_job({**base, "head": {"loss": "mse"}}, source="t")
    job = parse_job(load_yaml(str(Path(__file__).resolve().parents[2] / "jobs" / "retinal_age.yaml")), "yaml")
    assert job.method == "retinal_age"


# --------------------------------------------------------------------------------------------
# end to end on generated fundus images (real Ray cluster)


@pytest.fixture(scope="module")
def age_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("age"))
    age_uri, dis_uri = make_age_data(root, seed=0)
    return root, age_uri, dis_uri


@pytest.fixture(scope="module")
def classifier(ray_cluster, age_data):
    """A tiny fundus-disease classifier trained with the `classify` method on the same images and
    published into a local catalogue as `disease_clf`."""
    from medray.training.launcher import run_job

    root, _, dis_uri = age_data
    out = run_job(classifier_job(dis_uri, f"{root}/runs", f"{root}/catalog"))
    assert out["published"] == "disease_clf:1"
    return f"{root}/catalog", out


EPOCHS = STUDY["epochs"]
N_ROWS = STUDY["n"]  # the study's setup (benchmarks/retinal_age_shift.py) is this test's setup


@pytest.fixture(scope="module")
def shifted_run(ray_cluster, age_data, classifier):
    """The whole job with the disease-aware shift (2 DDP workers)."""
    from medray.training.launcher import run_job

    root, age_uri, _ = age_data
    catalog, _ = classifier
    job = age_job(age_uri, f"{root}/runs", catalog, "age_shifted", loss="shifted")
    return job, run_job(job)


@pytest.mark.slow
def test_job_chains_stages_publishes_and_skips_finished_stages(age_data, classifier, shifted_run, cli):
    import pyarrow.parquet as pq

    from medray.catalog import Catalog
    from medray.data import imageio
    from medray.inference.predictor import load_predictor
    from medray.training.launcher import run_job

    root, _, _ = age_data
    catalog, _ = classifier
    job, out = shifted_run
    assert out["stages"] == {"responses": "ran", "offsets": "ran", "train": "ran", "evaluate": "ran"}
    run = Path(root) / "runs" / "age_shifted"
    audit = pq.read_table(run / "offsets" / "offsets.parquet")
    assert audit.num_rows == N_ROWS
    assert {"image", "age", "r", "T_a", "M_a", "flagged", "dy"} <= set(audit.column_names)
    dy = np.array(audit["dy"].to_pylist())
    assert 0 < (dy > 0).sum() < N_ROWS and dy.max() <= 10
    for png in ("offsets/offset_hist.png", "offsets/responses_by_age.png", "evaluate/pred_vs_true.png",
                "evaluate/age_gap.png", "train/curves.png"):
        assert (run / png).stat().st_size > 5000, png
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert metrics["n"] > 0 and np.isfinite(metrics["mae"]) and "mae_dy0" in metrics
    assert set(metrics["gap_dy0"]) == {"n", "mean", "median", "std"}
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert len(summary["history"]) == EPOCHS
    assert summary["history"][-1]["train_loss"] < summary["history"][0]["train_loss"]
    assert out["published"] == "age_shifted:1"

    # the published model: retinal age, and with the chronological age the age gap
    cat = Catalog(catalog)
    card = cat.get("age_shifted")
    assert card.task == "retinal_age" and card.architecture["num_classes"] == 80 - 35 + 1
    pred = load_predictor(card, cat, device="cpu")
    img = imageio.read_image(audit["image"][0].as_py())
    res = pred.predict([img, img], ages=[50.0, None])
    assert 35 <= res[0]["retinal_age"] <= 80
    assert res[0]["age_gap"] == pytest.approx(res[0]["retinal_age"] - 50.0, abs=1e-3)
    assert "age_gap" not in res[1]
    code, text, err = cli("predict", "age_shifted", audit["image"][0].as_py(), "--catalog", catalog)
    assert code == 0 and "retinal_age" in text, err

    # re-running skips every finished stage (and only re-publishes)
    out2 = run_job(job)
    assert set(out2["stages"].values()) == {"skipped"}
    assert out2["published"] == "age_shifted:2"
    assert out2["evaluation"]["mae"] == out["evaluation"]["mae"]


# The margins come from the repeated study of exactly this setup (python benchmarks/retinal_age_shift.py,
# 10 data seeds; README "Method results"). Shifted minus baseline on the held-out eyes:
#   diseased-eye age gap          +2.62 +- 1.00 years, min +1.22, larger in 10/10  -> margin 0.5 years
#   diseased - healthy contrast   +2.46 +- 1.28 years, min +0.28, larger in 10/10  -> must be > 0
# The first is the seed's claim; the second says the gap is the diseased eyes' own, not the whole model
# moving older. Both models must also beat a constant prediction on the unshifted eyes, or the comparison
# says nothing (the study measured dy=0 MAE 2.3-3.8 years against a constant's 4.6-5.5).
SHIFT_MARGIN_YEARS = 0.5


@pytest.mark.slow
def test_shift_gives_the_diseased_eyes_a_larger_gap_than_the_baseline(age_data, classifier, shifted_run):
    from medray.training.launcher import run_job

    root, age_uri, _ = age_data
    catalog, _ = classifier
    _, shifted = shifted_run
    # the baseline starts from the shifted run's finished stages 1-2 (same classifier, same images: the
    # same responses and offsets), so only the loss differs; it skips them like any re-run would
    import shutil

    for st in ("responses", "offsets"):
        shutil.copytree(Path(root) / "runs" / "age_shifted" / st, Path(root) / "runs" / "age_baseline" / st)
    base = run_job(age_job(age_uri, f"{root}/runs", catalog, "age_baseline", loss=STUDY["baseline"]))
    assert base["stages"]["responses"] == "skipped" and base["stages"]["train"] == "ran"
    s, b = shifted["evaluation"], base["evaluation"]
    # the same images, responses and offsets; only the loss differs
    assert s["n"] == b["n"] and s["gap_dy_pos"]["n"] == b["gap_dy_pos"]["n"]
    print(f"diseased - healthy gap: shifted {s['gap_disease_minus_healthy']:.2f} vs baseline "
          f"{b['gap_disease_minus_healthy']:.2f}; diseased gap: shifted {s['gap_disease']['mean']:.2f} vs baseline {b['gap_disease']['mean']:.2f}; "
          f"dy>0 gap: shifted {s['gap_dy_pos']['mean']:.2f} vs baseline {b['gap_dy_pos']['mean']:.2f}; "
          f"MAE dy=0: {s['mae_dy0']:.2f} vs {b['mae_dy0']:.2f}")
    for r in (s, b):  # both learned age: a comparison of two constants would say nothing
        assert r["mae_dy0"] < r["mae_constant"], r
    assert s["gap_disease"]["mean"] - b["gap_disease"]["mean"] > SHIFT_MARGIN_YEARS
    assert s["gap_disease_minus_healthy"] > b["gap_disease_minus_healthy"]


@pytest.mark.slow
def test_whole_job_on_s3_and_force_reruns(ray_cluster, s3_bucket, age_data, classifier, cli):
    from medray import storage
    from medray.catalog import Catalog
    from medray.training.launcher import run_job

    root, age_uri, _ = age_data
    catalog, _ = classifier
    data_uri = f"{s3_bucket}/data/age.parquet"
    # the manifest and its images on S3 (same rows, image URIs rewritten)
    from medray.data import manifest

    t = manifest.read_manifest(age_uri)
    rows = t.to_pylist()[:48]
    for r in rows:
        dst = f"{s3_bucket}/data/img/{Path(r['image']).name}"
        storage.write_bytes(dst, Path(r["image"]).read_bytes())
        r["image"] = dst
    manifest.write_manifest(rows, data_uri, "fundus_age")
    job = age_job(data_uri, f"{s3_bucket}/runs", catalog, "age_s3", epochs=1, workers=1,
                  run__catalog=f"{s3_bucket}/catalog", offsets__min_group_size=4)
    out = run_job(job)
    assert out["run"] == f"{s3_bucket}/runs/age_s3" and out["published"] == "age_s3:1"
    for a in ("responses/_done.json", "offsets/offsets.parquet", "train/best_model.safetensors",
              "evaluate/metrics.json", "evaluate/pred_vs_true.png"):
        assert storage.exists(f"{s3_bucket}/runs/age_s3/{a}"), a
    assert Catalog(f"{s3_bucket}/catalog").get("age_s3").task == "retinal_age"
    before = storage.read_json(f"{s3_bucket}/runs/age_s3/offsets/_done.json")["finished_at"]
    out2 = run_job(job, force=True)
    assert set(out2["stages"].values()) == {"ran"}
    assert out2["resumed_from_epoch"] == -1  # the forced run trained from scratch
    assert storage.read_json(f"{s3_bucket}/runs/age_s3/offsets/_done.json")["finished_at"] >= before
