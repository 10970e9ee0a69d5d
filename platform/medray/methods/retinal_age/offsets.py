"""Stage 2 of METHODS.md §1: the disease-aware age offsets ``dy`` from the classifier responses ``r``.

Per integer age group ``a`` (``floor(age)`` by default: a 27.6-year-old is in their 27th year):

* ``T_a``: sort the group's responses descending and take the top ``p`` share; ``T_a`` is the response
  of the LAST sample inside that share, i.e. the ``k``-th highest with ``k = ceil(p * n)`` (at least 1).
  A group of 10 000 with ``p = 2.5 %`` takes the 250th highest response.
* ``M_a``: the group's mean response.

Per sample ``i`` of group ``a``: ``r_i < T_a`` -> ``dy_i = 0``; else search upward ``k = 1, 2, ...`` and
stop at the first ``k`` with ``r_i < M_{a+k}``: ``dy_i = k``; the search is capped at ``max_offset``
(default 10: still above ``M_{a+10}`` -> 10).

Decisions the seed leaves open (each an :class:`OffsetSpec` field):

``missing_age`` — an age between the youngest and the oldest present that has no samples, met during
    the search. ``"interpolate"`` (default): its mean is interpolated linearly between the nearest
    present ages. ``"skip"``: it never stops the search (the sample passes it). ``"stop"``: the search
    stops there (``dy`` = that age minus ``a``).
``past_oldest`` — the search runs past the oldest age present. ``"stop"`` (default): it stops at the
    oldest age, ``dy = a_max - a`` (a sample of the oldest group gets 0). ``"cap"``: ages past the oldest
    count as exceeded, so the sample reaches ``max_offset``.
``small_group`` — groups with fewer than ``min_group_size`` samples (default 40 = 1 / 2.5 %, the
    smallest group whose top-``p`` share holds one whole sample). ``"pool"`` (default): ``T_a`` is taken
    from the pooled responses of ages ``a - w .. a + w`` (``w`` = ``pool_window``, default 2, widened
    one year at a time up to ``max_pool_window`` until the pool reaches ``min_group_size``).
    ``"keep"``: use the group's own responses anyway. ``"no_shift"``: every sample of the group gets
    ``dy = 0``.

Everything is vectorised over rows (numpy sorts, bincounts and one ``(rows x max_offset)`` comparison
over the flagged rows, in chunks); the only Python loops run over age groups, never rows, so the
stage handles millions of rows in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from medray.config import StrictModel
from medray.errors import ConfigError


class OffsetSpec(StrictModel):
    """How responses become age offsets (see the module docstring for each decision)."""

    p: float = Field(0.025, gt=0, le=1, description="top share per age group that is flagged (2.5 % or 5 %)")
    max_offset: int = Field(10, ge=1, le=100, description="cap on dy (years)")
    age_grouping: Literal["floor", "round"] = "floor"
    missing_age: Literal["interpolate", "skip", "stop"] = "interpolate"
    past_oldest: Literal["stop", "cap"] = "stop"
    small_group: Literal["pool", "keep", "no_shift"] = "pool"
    min_group_size: int = Field(40, ge=1)
    pool_window: int = Field(2, ge=0)
    max_pool_window: int = Field(10, ge=0)
    stats_splits: list[str] = Field(default_factory=lambda: ["train"],
                                    description="splits whose responses define T_a and M_a (dy is applied to all rows)")

    @model_validator(mode="after")
    def _windows(self) -> "OffsetSpec":
        if self.max_pool_window < self.pool_window:
            raise ValueError(f"max_pool_window ({self.max_pool_window}) < pool_window ({self.pool_window})")
        return self


@dataclass
class GroupStats:
    """Per-age statistics on the integer grid ``ages`` (youngest..oldest present)."""

    ages: np.ndarray  # int64 (G,)
    count: np.ndarray  # int64 (G,) samples per age (0 = missing)
    threshold: np.ndarray  # float64 (G,) T_a (NaN where missing, or no_shift small group)
    mean: np.ndarray  # float64 (G,) M_a as observed (NaN where missing)
    search_mean: np.ndarray  # float64 (G,) the mean used by the search (missing ages filled per policy)
    pooled: np.ndarray  # bool (G,) T_a came from a pooled window
    top_k: np.ndarray  # int64 (G,) the k of T_a (k-th highest response of the group or pool)

    def at(self, a: np.ndarray) -> np.ndarray:
        """Grid index of integer ages ``a`` (must lie inside the grid)."""
        return np.asarray(a, np.int64) - int(self.ages[0])

    def as_table(self):
        import pyarrow as pa

        return pa.table({"age": self.ages, "count": self.count, "T": self.threshold, "M": self.mean,
                         "M_search": self.search_mean, "pooled": self.pooled, "top_k": self.top_k})


def age_groups(age: np.ndarray, grouping: str = "floor") -> np.ndarray:
    a = np.asarray(age, np.float64)
    if not np.all(np.isfinite(a)):
        raise ConfigError("offsets: ages must be finite (drop rows with a null age first)")
    return (np.floor(a) if grouping == "floor" else np.floor(a + 0.5)).astype(np.int64)


def top_k_of(n: np.ndarray | int, p: float) -> np.ndarray:
    """``k = ceil(p * n)``, at least 1: the size of the top-``p`` share (10 000 x 2.5 % -> 250)."""
    n = np.asarray(n, np.float64)
    return np.maximum(1, np.ceil(p * n - 1e-9)).astype(np.int64)


def group_stats(groups: np.ndarray, r: np.ndarray, spec: OffsetSpec) -> GroupStats:
    """``T_a``, ``M_a`` per integer age, from the responses ``r`` of rows in age groups ``groups``."""
    g = np.asarray(groups, np.int64)
    r = np.asarray(r, np.float64)
    if g.shape != r.shape or g.ndim != 1:
        raise ConfigError(f"offsets: groups {g.shape} and responses {r.shape} must be 1-D of one length")
    if len(g) == 0:
        raise ConfigError("offsets: no rows to compute age-group statistics from")
    if not np.all(np.isfinite(r)):
        raise ConfigError("offsets: responses must be finite")
    lo, hi = int(g.min()), int(g.max())
    ages = np.arange(lo, hi + 1, dtype=np.int64)
    idx = g - lo
    count = np.bincount(idx, minlength=len(ages)).astype(np.int64)
    sums = np.bincount(idx, weights=r, minlength=len(ages))
    present = count > 0
    mean = np.full(len(ages), np.nan)
    mean[present] = sums[present] / count[present]

    # rows sorted by (age asc, response desc): a group is a contiguous slice, its k-th highest at start+k-1
    order = np.lexsort((-r, idx))
    r_sorted = r[order]
    starts = np.concatenate([[0], np.cumsum(count)[:-1]])
    k = top_k_of(count, spec.p)
    threshold = np.full(len(ages), np.nan)
    threshold[present] = r_sorted[starts[present] + k[present] - 1]
    pooled = np.zeros(len(ages), bool)

    small = present & (count < spec.min_group_size)
    if spec.small_group == "no_shift":
        threshold[small] = np.nan  # nothing is flagged in these groups
    elif spec.small_group == "pool":
        cum = np.concatenate([[0], np.cumsum(count)])  # rows of grid ages [i, j) = r_sorted[cum[i]:cum[j]]
        for gi in np.flatnonzero(small):  # loop over (few) age groups, not rows
            w = spec.pool_window
            while True:
                i0, i1 = max(0, gi - w), min(len(ages), gi + w + 1)
                n_pool = int(cum[i1] - cum[i0])
                if n_pool >= spec.min_group_size or w >= spec.max_pool_window or (i0 == 0 and i1 == len(ages)):
                    break
                w += 1
            vals = r_sorted[cum[i0]:cum[i1]]
            kk = int(top_k_of(n_pool, spec.p))
            threshold[gi] = -np.partition(-vals, kk - 1)[kk - 1]  # k-th highest of the pool
            k[gi] = kk
            pooled[gi] = True

    search_mean = mean.copy()
    missing = ~present
    if missing.any():
        if spec.missing_age == "interpolate":
            search_mean[missing] = np.interp(ages[missing], ages[present], mean[present])
        elif spec.missing_age == "skip":
            search_mean[missing] = -np.inf  # r > -inf: the search passes the missing age
        else:  # stop
            search_mean[missing] = np.inf  # r < inf: the search stops at the missing age
    k = np.where(present, k, 0)
    return GroupStats(ages, count, threshold, mean, search_mean, pooled, k)


def offsets_for(groups: np.ndarray, r: np.ndarray, stats: GroupStats, spec: OffsetSpec,
                chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dy, T_a, M_a)`` per row (ages outside the stats' grid get dy = 0 and NaN T/M)."""
    g = np.asarray(groups, np.int64)
    r = np.asarray(r, np.float64)
    G = len(stats.ages)
    K = spec.max_offset
    pos = stats.at(g)
    inside = (pos >= 0) & (pos < G)
    pos_c = np.clip(pos, 0, G - 1)
    T = np.where(inside, stats.threshold[pos_c], np.nan)
    M = np.where(inside, stats.mean[pos_c], np.nan)
    dy = np.zeros(len(g), np.int16)
    flagged = np.flatnonzero(inside & np.isfinite(T) & (r >= np.nan_to_num(T, nan=np.inf)))
    # the search means padded past the oldest age: +inf stops the search there, -inf lets it run to the cap
    pad = np.inf if spec.past_oldest == "stop" else -np.inf
    ext = np.concatenate([stats.search_mean, np.full(K, pad)])
    ks = np.arange(1, K + 1, dtype=np.int64)
    for s in range(0, len(flagged), chunk):
        rows = flagged[s:s + chunk]
        p0 = pos[rows]
        means = ext[p0[:, None] + ks[None, :]]  # (n, K): M_{a+1} .. M_{a+K}
        below = r[rows, None] < means
        hit = below.any(axis=1)
        first = np.where(hit, below.argmax(axis=1) + 1, K)  # first k with r < M_{a+k}; cap K
        if spec.past_oldest == "stop":  # a stop on the padding means "stopped at the oldest age"
            first = np.minimum(first, G - 1 - p0)
        dy[rows] = first.astype(np.int16)
    return dy, T, M


def compute_offsets(age: np.ndarray, r: np.ndarray, spec: OffsetSpec,
                    stats_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, GroupStats]:
    """Offsets for every row; ``T_a``/``M_a`` from the rows in ``stats_mask`` (default all).

    Returns ``(dy, T_a per row, M_a per row, GroupStats)``."""
    g = age_groups(age, spec.age_grouping)
    r = np.asarray(r, np.float64)
    sel = slice(None) if stats_mask is None else np.asarray(stats_mask, bool)
    stats = group_stats(g[sel], r[sel], spec)
    dy, T, M = offsets_for(g, r, stats, spec)
    return dy, T, M, stats


def offsets_table(table, spec: OffsetSpec, age_col: str = "age", response_col: str = "r",
                  split_col: str = "split"):
    """The audit table: the input columns plus ``age_group``, ``T_a``, ``M_a``, ``flagged``
    (``r >= T_a``) and ``dy``.

    ``T_a``/``M_a`` come from the rows of ``spec.stats_splits`` (all rows when the table has no
    split column); rows with a null age or response get ``dy = 0``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for c in (age_col, response_col):
        if c not in table.column_names:
            raise ConfigError(f"offsets: column {c!r} missing (have {table.column_names})")
    valid = pc.and_(pc.is_valid(table[age_col]), pc.is_valid(table[response_col])).to_numpy(zero_copy_only=False)
    age = table[age_col].to_numpy(zero_copy_only=False).astype(np.float64)
    r = table[response_col].to_numpy(zero_copy_only=False).astype(np.float64)
    valid &= np.isfinite(age) & np.isfinite(r)
    if split_col in table.column_names and spec.stats_splits:
        in_stats = pc.is_in(table[split_col], value_set=pa.array(spec.stats_splits)).to_numpy(zero_copy_only=False)
        in_stats = np.asarray(in_stats, bool) & valid
    else:
        in_stats = valid
    if not in_stats.any():
        raise ConfigError(f"offsets: no rows with an age and a response in splits {spec.stats_splits}")
    g = np.zeros(len(age), np.int64)
    g[valid] = age_groups(age[valid], spec.age_grouping)
    stats = group_stats(g[in_stats], r[in_stats], spec)
    dy = np.zeros(len(age), np.int16)
    T = np.full(len(age), np.nan)
    M = np.full(len(age), np.nan)
    v = np.flatnonzero(valid)
    dy[v], T[v], M[v] = offsets_for(g[v], r[v], stats, spec)
    out = table
    nan_age = ~np.isfinite(age) & pc.is_valid(table[age_col]).to_numpy(zero_copy_only=False)
    if nan_age.any():  # a NaN age (a null that went through numpy) becomes null again, so readers that
        # drop rows without an age (training, evaluation) drop it too
        i = out.column_names.index(age_col)
        out = out.set_column(i, age_col, pa.array(np.where(nan_age, 0.0, age), out.schema.field(age_col).type,
                                                  mask=~np.isfinite(age)))
    for name, arr in (("age_group", pa.array(np.where(valid, g, 0), pa.int32(), mask=~valid)),
                      ("T_a", pa.array(T, pa.float32())), ("M_a", pa.array(M, pa.float32())),
                      ("flagged", pa.array(valid & (r >= np.nan_to_num(T, nan=np.inf)))), ("dy", pa.array(dy, pa.int16()))):
        if name in out.column_names:
            out = out.drop_columns([name])
        out = out.append_column(name, arr)
    return out, stats


def summary(dy: np.ndarray, stats: GroupStats) -> dict:
    dy = np.asarray(dy)
    hist = np.bincount(dy.astype(np.int64), minlength=1)
    return {"rows": int(len(dy)), "shifted": int((dy > 0).sum()),
            "shifted_share": float((dy > 0).mean()) if len(dy) else math.nan,
            "mean_dy_shifted": float(dy[dy > 0].mean()) if (dy > 0).any() else 0.0,
            "dy_hist": {int(k): int(v) for k, v in enumerate(hist) if v},
            "age_groups": int((stats.count > 0).sum()), "missing_ages": int((stats.count == 0).sum()),
            "pooled_groups": int(stats.pooled.sum())}
