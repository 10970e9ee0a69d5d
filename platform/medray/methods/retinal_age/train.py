"""Stage 3's per-worker loop (Ray Train): LDL bins + the disease-aware three-case loss (or a baseline)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import torch

    from medray.data.transforms import RandomAugment, normalize
    from medray.methods.retinal_age.losses import age_bins, loss_terms
    from medray.methods.retinal_age.model import build_model
    from medray.methods.retinal_age.spec import Config
    from medray.training import loop

    cfg = Config.model_validate(config["job"])
    meta = config["meta"]
    w = loop.Worker(cfg)
    head = cfg.head
    model = build_model(cfg.model.name, head.num_bins, in_chans=cfg.model.in_chans, weights=cfg.model.weights,
                        s3=cfg.storage.s3, **cfg.model.kwargs)
    model = w.prepare(model)
    bins = age_bins(head.age_min, head.age_max, device=w.device)
    bs, accum = cfg.optim.batch_size, cfg.optim.grad_accum_steps
    steps_per_epoch = max(1, math.ceil(meta["train_rows"] // (w.world * bs) / accum))
    opt = loop.build_optimizer(cfg.optim, model.parameters())
    sched = loop.build_scheduler(cfg.optim, opt, steps_per_epoch)
    state = w.restore({"model": model}, opt, sched)
    aug = RandomAugment(**cfg.data.augment.model_dump(exclude={"enabled"})) if cfg.data.augment.enabled else None
    kw = {"loss": head.loss, "sigma": head.sigma, "lambda_1": head.lambda_1, "lambda_2": head.lambda_2}
    dtypes = {"image": torch.uint8, "age": torch.float32, "dy": torch.float32, "r": torch.float32}
    train_it, val_it = w.shard("train"), w.shard("val")

    for epoch in range(state.epoch, cfg.optim.epochs):
        w.epoch_start()
        model.train()
        gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + epoch * 101 + w.rank)
        sums = {"loss": 0.0, "n": 0.0, "abs_err": 0.0, "case1": 0.0, "case2": 0.0, "case3": 0.0}
        n_steps, i = 0, -1
        opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(train_it.iter_torch_batches(
                batch_size=bs, local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                local_shuffle_seed=cfg.run.seed + epoch, prefetch_batches=2, dtypes=dtypes,
                drop_last=True)):  # a last batch of 1 breaks BatchNorm; shards are equal, so DDP stays in step
            x = normalize(batch["image"].to(w.device))
            if aug is not None:
                x = aug(x, generator=gen)
            y, dy, r = (batch[k].to(w.device) for k in ("age", "dy", "r"))
            with w.autocast():
                logits = model(w.to_input(x))
            t = loss_terms(logits, y, dy, r, bins, **kw)
            loss = t["loss"].mean()
            (loss / accum).backward()
            if (i + 1) % accum == 0:
                loop.optimizer_step(cfg.optim, model, opt, sched)
                state.step += 1
                n_steps += 1
            n = len(y)
            sums["loss"] += float(loss) * n
            sums["n"] += n
            sums["abs_err"] += float((t["y_hat"].detach() - y).abs().sum())
            for c in (1, 2, 3):
                sums[f"case{c}"] += float((t["case"] == c).sum())
            w.step_progress(epoch, i + 1, steps_per_epoch * accum, float(loss))
        if (i + 1) % accum != 0:
            loop.optimizer_step(cfg.optim, model, opt, sched)
            state.step += 1
            n_steps += 1
        tr = w.allreduce_sums(sums)
        val = evaluate_shard(w, model, val_it, bins, bs, kw)
        n_tr = max(1.0, tr["n"])
        metrics = {"epoch": epoch + 1, "train_loss": tr["loss"] / n_tr, "train_mae": tr["abs_err"] / n_tr,
                   **{f"train_case{c}_share": tr[f"case{c}"] / n_tr for c in (1, 2, 3)},
                   "lr": opt.param_groups[0]["lr"], **val,
                   "resumed_from_epoch": state.resumed_from_epoch if state.resumed_from_epoch is not None else -1}
        state.epoch = epoch + 1
        state.update_best(metrics.get(cfg.run.metric), cfg.run.mode)
        metrics["images_per_s"] = tr["n"] / max(1e-9, time.time() - w._t_epoch)
        w.epoch_line(epoch, cfg.optim.epochs, n_steps, int(tr["n"]), metrics, cfg.run.metric)
        state.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        w.report(metrics, state, {"model": model}, opt, sched)



def evaluate_shard(w, model, val_it, bins, bs: int, kw: dict[str, Any]) -> dict[str, float]:
    """Validation over the whole val set (batch k on worker ``k % world``, gathered): loss, MAE and
    Pearson r overall and on dy = 0, mean age gap for dy = 0 / dy > 0."""
    import torch

    from medray.data.transforms import normalize
    from medray.evaluation import metrics as M
    from medray.methods.retinal_age.losses import loss_terms

    model.eval()
    rows = []
    with torch.no_grad():
        for k, batch in enumerate(val_it.iter_torch_batches(batch_size=bs, dtypes={
                "image": torch.uint8, "age": torch.float32, "dy": torch.float32, "r": torch.float32})):
            if k % w.world != w.rank:
                continue
            x = normalize(batch["image"].to(w.device))
            with w.autocast():
                logits = model(w.to_input(x))
            y, dy, r = (batch[c].to(w.device) for c in ("age", "dy", "r"))
            t = loss_terms(logits, y, dy, r, bins, **kw)
            rows.append(np.stack([y.cpu().numpy(), t["y_hat"].cpu().numpy(), dy.cpu().numpy(),
                                  t["loss"].cpu().numpy()], 1))
    parts = w.gather(np.concatenate(rows) if rows else np.zeros((0, 4)))
    a = np.concatenate(parts).astype(np.float64)
    model.train()
    if len(a) == 0:
        return {"val_loss": float("nan"), "val_mae": float("nan"), "val_n": 0}
    y, yh, dy, lo = a.T
    z = dy == 0
    out = {"val_loss": float(lo.mean()), "val_mae": M.mae(y, yh), "val_n": int(len(y)),
           "val_r": M.pearson_r(y, yh) if len(y) > 1 else float("nan"),
           "val_mae_dy0": M.mae(y[z], yh[z]) if z.any() else float("nan"),
           "val_gap_dy0": float((yh - y)[z].mean()) if z.any() else float("nan"),
           "val_gap_dy_pos": float((yh - y)[~z].mean()) if (~z).any() else float("nan")}
    return out
