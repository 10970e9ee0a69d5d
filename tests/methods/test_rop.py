"""Semi-supervised ROP staging (METHODS.md §5): the mean teacher's math without Ray (EMA, losses,
ramp-up, labelled share, views, metrics, across two real gloo processes for DDP), then end to end on
the real local Ray cluster with 2 CPU workers (two split streams, checkpoint/resume of student and
teacher, publish + predict, the supervised-only switch) and on S3."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from medray.methods.rop import ema, losses, streams
from medray.methods.rop import evaluate as rop_eval


# --------------------------------------------------------------------------------------------- EMA


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def test_ema_decay_schedule():
    assert ema.ema_decay(1, 0.99) == 0.5
    assert ema.ema_decay(3, 0.99) == 0.75
    assert ema.ema_decay(99, 0.99) == 0.99
    assert ema.ema_decay(10_000, 0.99) == 0.99
    assert ema.ema_decay(10_000, 0.9) == 0.9


def test_teacher_equals_analytic_ema_after_k_steps():
    student = _net()
    mt = ema.MeanTeacher(student, alpha=0.9)
    w0 = {k: v.clone().double() for k, v in student.state_dict().items()}
    assert all(not p.requires_grad for p in mt.model.parameters())
    rng = torch.Generator().manual_seed(1)
    snaps = []
    k_steps = 25  # passes alpha: decays 1/2, 2/3, ... then 0.9
    for k in range(1, k_steps + 1):
        with torch.no_grad():  # an arbitrary student trajectory (weights and BN statistics)
            for t in student.state_dict().values():
                if t.is_floating_point():
                    t.add_(torch.randn(t.shape, generator=rng))
                else:
                    t.add_(1)
        snaps.append({n: v.clone().double() for n, v in student.state_dict().items()})
        mt.update(student, k)
    d = [ema.ema_decay(k, 0.9) for k in range(1, k_steps + 1)]
    teacher = mt.model.state_dict()
    for name, t in teacher.items():
        if not t.is_floating_point():
            assert int(t) == int(snaps[-1][name]), name  # integer buffers are copied
            continue
        # closed form: T_K = prod_j d_j * W_0 + sum_k (1 - d_k) prod_{j>k} d_j * W_k
        expect = math.prod(d) * w0[name]
        for k in range(k_steps):
            expect = expect + (1 - d[k]) * math.prod(d[k + 1:]) * snaps[k][name]
        torch.testing.assert_close(t.double(), expect, rtol=1e-5, atol=1e-5, msg=name)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str, sync: bool) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = nn.parallel.DistributedDataParallel(_net())
    mt = ema.MeanTeacher(model, alpha=0.99)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(rank)  # each rank its own data (BN statistics differ)
    for step in range(1, 6):
        x = torch.randn(6, 3, 8, 8, generator=g) * (1 + rank)
        loss = model(x).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mt.update(model, step, sync_buffers=sync)
    sd = {k: v.tolist() for k, v in mt.model.state_dict().items()}
    with open(os.path.join(out_dir, f"rank{rank}_{sync}.json"), "w") as f:
        json.dump({"checksum": mt.checksum(), "state": sd}, f)
    # gloo sends asynchronously: without a barrier rank 0 could tear its group down while rank 1 still
    # receives the last sync_buffers broadcast. And gloo's threads can still abort the process in the
    # interpreter's own teardown ("terminate called without an active exception", SIGABRT, ~1 run in 6
    # here), after the result is written: leave without it.
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


@pytest.mark.parametrize("sync", [True, False])
def test_ema_is_identical_on_every_ddp_rank(tmp_path, sync):
    """Two real gloo processes, a BatchNorm network, different data per rank: with sync_buffers (what
    the training loop passes under DDP) the teachers are bit-identical; without it the BN running
    statistics drift apart (so the check has teeth)."""
    import torch.multiprocessing as mp

    from medray.netutil import free_port

    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path), sync), nprocs=2, join=True)
    a, b = (json.loads((tmp_path / f"rank{r}_{sync}.json").read_text()) for r in (0, 1))
    params = [k for k in a["state"] if "running" not in k and "num_batches" not in k]
    assert all(a["state"][k] == b["state"][k] for k in params)  # parameters: equal either way
    if sync:
        assert a["state"] == b["state"] and a["checksum"] == b["checksum"]
    else:
        assert a["state"]["1.running_mean"] != b["state"]["1.running_mean"]


# ------------------------------------------------------------------------------------------ losses


def test_relation_loss_zero_for_identical_features_and_batch_order_invariant():
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(10, 32, generator=g), torch.randn(10, 32, generator=g)
    assert float(losses.relation_consistency(fs, fs.clone())) == 0.0
    base = losses.relation_consistency(fs, ft)
    assert float(base) > 1e-4
    perm = torch.randperm(10, generator=g)
    torch.testing.assert_close(losses.relation_consistency(fs[perm], ft[perm]), base)
    # scale-invariant per sample (L2-normalised features), rows of the relation matrix have unit norm
    torch.testing.assert_close(losses.relation_consistency(fs * 3.0, ft), base)
    r = losses.relation_matrix(fs)
    assert r.shape == (10, 10)
    torch.testing.assert_close(r.norm(dim=1), torch.ones(10))
    # gradient reaches the student only
    fs.requires_grad_(True)
    ft.requires_grad_(True)
    losses.relation_consistency(fs, ft).backward()
    assert fs.grad is not None and float(fs.grad.abs().sum()) > 0 and ft.grad is None


def test_prediction_consistency_is_mse_of_probabilities():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert float(losses.prediction_consistency(a, a.clone())) == 0.0
    expect = ((a.softmax(1) - b.softmax(1)) ** 2).mean()
    torch.testing.assert_close(losses.prediction_consistency(a, b), expect)
    tot = losses.total_loss(torch.tensor(1.0), torch.tensor(0.5), torch.tensor(0.25), w=2.0, lam=4.0)
    assert float(tot) == 1.0 + 2.0 * (0.5 + 4.0 * 0.25)


def test_sigmoid_rampup_start_middle_end():
    assert losses.consistency_weight(0, 10.0, 5) == pytest.approx(10.0 * math.exp(-5))
    assert losses.consistency_weight(2.5, 10.0, 5) == pytest.approx(10.0 * math.exp(-1.25))
    assert losses.consistency_weight(5, 10.0, 5) == pytest.approx(10.0)
    assert losses.consistency_weight(50, 10.0, 5) == pytest.approx(10.0)
    ws = [losses.sigmoid_rampup(t / 10, 5) for t in range(0, 60)]
    assert all(x <= y for x, y in zip(ws, ws[1:]))
    assert losses.sigmoid_rampup(0, 0) == 1.0


# ------------------------------------------------------------------------------------------- data


def test_labelled_share_by_patient_is_seeded_and_sized():
    pats = [f"p{i:03d}" for i in range(50)]
    a = streams.choose_labelled_patients(pats + pats, 0.2, seed=0)  # both eyes: duplicates collapse
    assert len(a) == 10 and a <= set(pats)
    assert a == streams.choose_labelled_patients(list(reversed(pats)), 0.2, seed=0)
    assert a != streams.choose_labelled_patients(pats, 0.2, seed=1)
    assert a < streams.choose_labelled_patients(pats, 0.5, seed=0)  # nested shares
    assert len(streams.choose_labelled_patients(pats, 0.001, seed=0)) == 1
    assert streams.choose_labelled_patients(pats, 1.0, seed=0) == set(pats)


def test_two_views_are_independent():
    from medray.data.transforms import RandomAugment

    x = torch.rand(4, 3, 32, 32)
    v1, v2 = streams.TwoViews(RandomAugment(), seed=3)(x)
    assert v1.shape == v2.shape == x.shape and not torch.allclose(v1, v2)
    w1, w2 = streams.TwoViews(RandomAugment(), seed=3)(x)
    torch.testing.assert_close(v1, w1)  # seeded
    torch.testing.assert_close(v2, w2)


# ------------------------------------------------------------------------------------- evaluation


def test_staging_metrics_and_comparison_plot(tmp_path):
    classes = ["s0", "s1", "s2", "s3"]
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    p = np.eye(4)[[0, 0, 1, 2, 2, 2, 3, 1]] * 0.7 + 0.075
    m = rop_eval.staging_metrics(y, p, classes, "test_")
    assert m["test_acc"] == 0.75 and m["test_recall_s1"] == 0.5 and m["test_recall_s0"] == 1.0
    from medray.evaluation import metrics as M

    assert m["test_kappa"] == pytest.approx(M.cohen_kappa(y, p.argmax(1), 4))
    assert 0 < m["test_kappa"] < 1 and 0.5 < m["test_auc"] <= 1
    rows = [{"fraction": f, "mode": mode, "seed": s, "test_kappa": v}
            for f in (0.1, 0.2) for s in (0, 1, 2) for mode, v in (("supervised", 0.5 + 0.01 * s),
                                                                    ("mean_teacher", 0.6 + 0.02 * s))]
    summ = rop_eval.summarize_runs(rows)
    assert summ["0.1"]["difference"]["mean"] == pytest.approx(0.11)
    assert summ["0.1"]["difference"]["wins"] == 3
    png = rop_eval.plot_comparison(summ, path=str(tmp_path / "cmp.png"))
    assert png[:4] == b"\x89PNG" and (tmp_path / "cmp.png").stat().st_size > 5000


# ------------------------------------------------------------------------------------------ config


def test_config_errors_name_the_field(tmp_path):
    from medray.config import load_spec, validate
    from medray.errors import ConfigError, ManifestError
    from medray.methods.rop import Config, build_datasets

    p = tmp_path / "bad.yaml"
    p.write_text("method: rop\ndata: {manifests: [x.parquet], labelled_fraction: 0}\n")
    with pytest.raises(ConfigError) as e:
        load_spec(Config, p)
    assert str(p) in str(e.value) and "data.labelled_fraction" in str(e.value)
    p.write_text("method: rop\ndata: {manifests: [x.parquet]}\nmean_teacher: {ema_decy: 0.9}\n")
    with pytest.raises(ConfigError) as e:
        load_spec(Config, p)
    assert "mean_teacher.ema_decy" in str(e.value)
    job = validate(Config, {"method": "rop", "data": {"manifests": [str(tmp_path / "missing.parquet")]}}, "t")
    with pytest.raises(ManifestError) as e2:
        build_datasets(job)
    assert "missing.parquet" in str(e2.value)


def test_repo_job_yaml_parses(repo):
    from medray.config import load_spec
    from medray.methods.rop import Config

    job = load_spec(Config, repo / "jobs" / "rop.yaml")
    assert job.method == "rop" and job.mean_teacher.enabled and job.run.metric == "val_kappa"


# --------------------------------------------------------------------------------- end to end (Ray)


@pytest.fixture(scope="module")
def rop_manifest(tmp_path_factory) -> str:
    from medray.data.synth import synth

    out = tmp_path_factory.mktemp("rop") / "rop.parquet"
    synth("rop", 72, str(out), seed=0, size=48)
    return str(out)


def _job(manifest: str, storage_path: str, name: str, catalog: str | None = None, **over):
    from medray.config import validate
    from medray.methods.rop import Config

    data = {
        "method": "rop",
        "model": {"name": "tiny"},
        "data": {"manifests": [manifest], "image_size": 48, "labelled_fraction": 0.3, "record_rows": True,
                 "decode_batch_size": 16, "unlabelled_batch_size": 8},
        "mean_teacher": {"rampup_epochs": 2},
        "optim": {"epochs": 2, "batch_size": 4, "lr": 0.003},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
        "run": {"name": name, "storage_path": storage_path, "metric": "val_kappa", "mode": "max",
                "checkpoints_to_keep": 3, "catalog": catalog},
    }
    for k, v in over.items():
        sec, key = k.split("__")
        data[sec][key] = v
    return validate(Config, data, "test")


def _latest(run_dir):
    return sorted(p for p in run_dir.iterdir() if p.name.startswith("epoch_"))[-1]


def _checksum_file(path) -> float:
    from safetensors.torch import load_file

    return float(sum(t.double().sum() for t in load_file(str(path)).values() if t.is_floating_point()))


@pytest.mark.slow
def test_two_workers_two_streams_resume_publish_predict(ray_cluster, rop_manifest, tmp_path):
    from medray.catalog import Catalog
    from medray.data import manifest as mf
    from medray.inference.predictor import load_predictor
    from medray.training.launcher import run_job

    cat = str(tmp_path / "catalog")
    out = run_job(_job(rop_manifest, str(tmp_path / "runs"), "mt", catalog=cat))
    assert out["mode"] == "mean_teacher" and out["resumed_from_epoch"] == -1
    run = tmp_path / "runs" / "mt"
    summary = json.loads((run / "summary.json").read_text())
    hist = summary["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    for h in hist:  # DDP: the EMA teacher is bit-identical on both ranks
        assert h["teacher_rank_spread"] == 0.0
        assert 0 < h["consistency_weight"] <= 1 and h["train_pc"] >= 0 and h["train_src"] >= 0
    assert {"test_kappa", "test_acc", "test_auc"} <= set(summary["test_metrics"])
    assert any(k.startswith("test_recall_") for k in summary["test_metrics"])
    assert (run / "test_confusion.png").stat().st_size > 1000 and (run / "curves.png").exists()

    # the checkpoint holds student, teacher, optimizer and step
    last = _latest(run)
    assert (last / "model.safetensors").exists() and (last / "teacher.safetensors").exists()
    ts = torch.load(last / "train_state.pt", weights_only=True)
    assert ts["optimizer"] and ts["step"] == hist[-1]["steps"] > 0
    assert _checksum_file(last / "teacher.safetensors") == pytest.approx(hist[-1]["teacher_checksum"], rel=1e-9)

    # the two streams: disjoint across workers, labelled and unlabelled disjoint, labelled = the share
    seen = json.loads((last / "rows_seen.json").read_text())
    lab, unl = seen["labelled"], seen["unlabelled"]
    assert len(lab) == len(unl) == 2 and all(lab) and all(unl)
    assert not set(unl[0]) & set(unl[1])  # one pass over the longer stream per epoch
    assert not (set(lab[0]) | set(lab[1])) & (set(unl[0]) | set(unl[1]))
    # the labelled stream is cycled within the epoch (shorter): no row in both workers' shards
    assert not set(lab[0]) & set(lab[1])
    table = mf.read_manifest(rop_manifest).to_pylist()
    root = os.path.dirname(rop_manifest)
    by_uri = {(r["image"] if "://" in r["image"] or os.path.isabs(r["image"]) else os.path.join(root, r["image"])): r
              for r in table}
    train = {u: r for u, r in by_uri.items() if r["split"] == "train"}
    lab_pat = {train[u]["patient_id"] for u in set(lab[0]) | set(lab[1])}
    unl_pat = {train[u]["patient_id"] for u in set(unl[0]) | set(unl[1])}
    assert lab_pat.isdisjoint(unl_pat)
    assert lab_pat == streams.choose_labelled_patients([r["patient_id"] for r in train.values()], 0.3, 0)

    # published student, predicted through its registered predictor
    card = Catalog(cat).get("mt")
    assert card.task == "rop_stage" and card.labels[0].startswith("stage0")
    pred = load_predictor(card, Catalog(cat), device="cpu")
    from medray.data import imageio

    img = imageio.read_image(next(iter(train)), mode="RGB")
    p = pred.predict([img])[0]
    assert set(p["probs"]) == set(card.labels) and 0 <= p["stage"] < len(card.labels)
    assert 0 <= p["expected_stage"] <= len(card.labels) - 1

    # resume: one more epoch restores BOTH models from the last checkpoint
    out2 = run_job(_job(rop_manifest, str(tmp_path / "runs"), "mt", catalog=cat, optim__epochs=3))
    assert out2["resumed_from_epoch"] == 2 and out2["published"] == "mt:2"
    h3 = json.loads((run / "summary.json").read_text())["history"]
    assert [h["epoch"] for h in h3] == [1, 2, 3]
    assert h3[-1]["restored_teacher_checksum"] == pytest.approx(hist[-1]["teacher_checksum"], rel=1e-9)
    assert h3[-1]["restored_student_checksum"] == pytest.approx(hist[-1]["student_checksum"], rel=1e-9)
    assert h3[-1]["steps"] == 3 * hist[0]["steps"]


@pytest.mark.slow
def test_supervised_only_is_one_switch_on_s3(ray_cluster, rop_manifest, s3_bucket):
    """The baseline (mean_teacher.enabled=false) with storage, data and catalogue on S3."""
    from medray import storage
    from medray.catalog import Catalog
    from medray.data.synth import synth
    from medray.training.launcher import run_job

    s3_manifest = f"{s3_bucket}/data/rop.parquet"
    synth("rop", 40, s3_manifest, seed=1, size=48)
    out = run_job(_job(s3_manifest, f"{s3_bucket}/runs", "sup", catalog=f"{s3_bucket}/catalog", optim__epochs=1,
                       mean_teacher__enabled=False))
    assert out["mode"] == "supervised"
    summary = storage.read_json(f"{s3_bucket}/runs/sup/summary.json")
    h = summary["history"][0]
    assert "teacher_checksum" not in h and "train_pc" not in h and h["steps"] > 0
    assert "test_kappa" in summary["test_metrics"]
    ck = [p for p in storage.listdir(f"{s3_bucket}/runs/sup") if "epoch_0001" in p]
    assert ck and not storage.exists(storage.join(f"{s3_bucket}/runs/sup", "epoch_0001", "teacher.safetensors"))
    card = Catalog(f"{s3_bucket}/catalog").get("sup")
    assert card.task == "rop_stage" and card.version == 1
    # the same job with the mean teacher on S3
    out2 = run_job(_job(s3_manifest, f"{s3_bucket}/runs", "mt", optim__epochs=1))
    assert out2["mode"] == "mean_teacher"
    assert storage.exists(f"{s3_bucket}/runs/mt/epoch_0001/teacher.safetensors")
