"""The paper's conclusions (docs/protocol.md, "The paper's conclusions"), each decided on a
statistic of the per-cell means with the numbers that decide it; "undetermined" when the cells it
needs are missing.

Input: :func:`gfmtune.results.tables.summarize` output (mean mIoU per cell, paper convention;
U-TAE has ft_rate -1) and, when every cell has per-patch test counts, its bootstrap replicates
(:mod:`gfmtune.results.uncertainty`: the same patch resample for every cell, so differences
are paired). "Abundant" labels is the largest fraction, "scarce" the smallest; each rule states
the statistic and the side of its threshold the claim needs (a "gain" that is a loss never
counts as help).

With replicates the statistic is evaluated on each of them: "supported" when its 95 % interval
lies entirely on the needed side of the threshold, "contradicted" when entirely on the other,
else "not distinguishable at 95 %". Without them (the published numbers, or cells from older
runs) the verdict is the point estimate's: true or false, labelled as such.

Each claim also records its statistic's ``unit`` (mIoU points, or percent for a relative gain)
and what it was ``decided_on``: the rows (model, FT-Rate), label fractions and frames of the
cells that entered the statistic, and the paper's models the claim speaks of that the run has
no cells of (a run of one GFM decides "FT-Rate is worth tuning" on that model alone).
:mod:`gfmtune.results.claims_table` writes them as Markdown and HTML.
"""

from __future__ import annotations

import operator

import numpy as np
import pandas as pd

from gfmtune.results.tables import KEYS, row_label, row_order
from gfmtune.results.uncertainty import LEVEL, interval

UTAE = -1.0
GFMS = ("CROMA", "DINO")
EVERY = (*GFMS, "U-TAE")
#: The unit of a rule's statistic: mIoU points (paper convention), or percent (a relative gain).
POINTS, PERCENT = "points", "%"
BOOTSTRAP = f"paired bootstrap over test patches, {LEVEL:g} % interval"
POINT = "point estimate (no per-patch test counts: no interval)"
UNDISTINGUISHABLE = f"not distinguishable at {LEVEL:g} %"
#: The side of the threshold a claim needs: (point test, interval entirely on it, on the other).
SIDES = {
    ">": (operator.gt, lambda lo, hi, x: lo > x, lambda lo, hi, x: hi < x),
    "<=": (operator.le, lambda lo, hi, x: hi < x, lambda lo, hi, x: lo > x),
}


def _values(s: pd.DataFrame, replicates: np.ndarray | None) -> pd.DataFrame:
    """Columns: 0 the point means, 1.. the replicates; index the cell keys."""
    columns = [s["mean"].to_numpy()[:, None]]
    if replicates is not None:
        columns.append(np.asarray(replicates, dtype=np.float64))
    return pd.DataFrame(np.hstack(columns), index=pd.MultiIndex.from_frame(s[KEYS]))


def _select(v: pd.DataFrame, **levels: object) -> pd.DataFrame:
    mask = np.ones(len(v), dtype=bool)
    for name, value in levels.items():
        mask &= v.index.get_level_values(name) == value
    return v[mask]


def _series(v: pd.DataFrame, model: str, ft: float, fraction: float) -> pd.DataFrame:
    """Rows per number of frames (sorted) of one (model, FT-Rate) at ``fraction``."""
    part = _select(v, model=model, ft_rate=ft, label_percent=fraction)
    return part.droplevel(["model", "ft_rate", "label_percent"]).sort_index()


def _row_means(v: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """mIoU averaged over frames per (model, FT-Rate) at ``fraction``."""
    return _select(v, label_percent=fraction).groupby(level=["model", "ft_rate"]).mean()


def _best_row(v: pd.DataFrame, fraction: float) -> tuple[str, float | None, float] | None:
    """The (model, FT-Rate) with the highest point mIoU averaged over frames at ``fraction``."""
    means = _row_means(v, fraction)[0]
    if means.empty:
        return None
    (model, ft), value = means.idxmax(), means.max()
    return str(model), (float(ft) if ft >= 0 else None), round(float(value), 2)


Key = tuple[str, float, float, int]


def _keys(model: str, ft: float, fraction: float, frames) -> list[Key]:
    """Cell keys (model, ft_rate, label_percent, timesteps) of one row at ``fraction``."""
    return [(model, ft, fraction, int(t)) for t in frames]


def decided_on(v: pd.DataFrame, cells: list[Key] | pd.Index, models: tuple[str, ...]) -> dict:
    """What a claim was decided on: its ``cells``' rows (``CROMA 0.0``), label fractions,
    frames and count, and ``missing``: which of ``models`` (the paper's models the claim speaks
    of) have no cell in the run (``v``)."""
    keys = sorted(set(map(tuple, cells)))
    rows = pd.DataFrame(keys, columns=KEYS)
    run = set(v.index.get_level_values("model"))
    return {
        "rows": [row_label(m, f) for m, f in row_order(rows)],
        "label_percents": sorted({float(p) for p in rows.label_percent}, reverse=True),
        "timesteps": sorted({int(t) for t in rows.timesteps}),
        "cells": len(keys),
        "missing": [m for m in models if m not in run],
    }


def _claim(
    text: str,
    rule: tuple[str, str, float, str],
    stat: np.ndarray | None,
    evidence: dict,
    used: dict,
) -> dict:
    """A claim decided on ``stat`` (column 0 the point value, then the replicates); ``rule``:
    (what the statistic is, ">" or "<=", threshold, unit); undetermined without it, or when a
    value of it is not finite (it decides nothing); ``used``: :func:`decided_on`."""
    name, side, threshold, unit = rule
    claim = {"claim": text, "rule": f"{name} {side} {threshold:g}", "unit": unit}
    point, inside, outside = SIDES[side]
    if stat is None or not np.isfinite(stat).all():
        verdict, basis, value, bounds = "undetermined", None, None, None
    elif len(stat) > 1:
        basis, value = BOOTSTRAP, round(float(stat[0]), 2)
        low, high = (float(b) for b in interval(stat))
        bounds = [round(low, 2), round(high, 2)]
        verdict = UNDISTINGUISHABLE
        if inside(low, high, threshold):
            verdict = "supported"
        elif outside(low, high, threshold):
            verdict = "contradicted"
    else:
        basis, value, bounds = POINT, round(float(stat[0]), 2), None
        verdict = "true" if point(stat[0], threshold) else "false"
    return claim | {
        "verdict": verdict,
        "basis": basis,
        "value": value,
        "interval": bounds,
        "evidence": evidence,
        "decided_on": used,
    }


def _frozen_lose(v: pd.DataFrame, rich: float, frames: list[int]) -> dict:
    utae = _series(v, "U-TAE", UTAE, rich)
    diffs, evidence, cells = [], {}, []
    for model in GFMS:
        gfm = _series(v, model, 0.0, rich)
        both = [t for t in frames if t > 1 and t in utae.index and t in gfm.index]
        if both:
            diffs += [utae.loc[t] - gfm.loc[t] for t in both]
            cells += _keys("U-TAE", UTAE, rich, both) + _keys(model, 0.0, rich, both)
            evidence[f"U-TAE vs {model} 0.0"] = {
                f"t={t}": [round(float(utae.loc[t, 0]), 2), round(float(gfm.loc[t, 0]), 2)]
                for t in both
            }
    return _claim(
        f"With abundant labels ({rich:g} %), frozen GFMs lose to U-TAE whenever t > 1.",
        (
            "the smallest over frames t > 1 of U-TAE's mIoU minus CROMA 0.0's and minus DINO 0.0's",
            ">",
            0,
            POINTS,
        ),
        np.min(diffs, axis=0) if diffs else None,
        evidence,
        decided_on(v, cells, EVERY),
    )


def _mean_beats(
    text: str, v: pd.DataFrame, fraction: float, a: tuple[str, float], b: tuple[str, float]
) -> dict:
    """Claim that row a's (model, FT-Rate) mIoU averaged over the frames both have at
    ``fraction`` exceeds row b's."""
    (label_a, series_a), (label_b, series_b) = (
        (row_label(*row), _series(v, *row, fraction)) for row in (a, b)
    )
    both = series_a.index.intersection(series_b.index)
    rule = (f"{label_a}'s mIoU averaged over frames minus {label_b}'s", ">", 0, POINTS)
    used = decided_on(v, _keys(*a, fraction, both) + _keys(*b, fraction, both), (a[0], b[0]))
    if both.empty:
        return _claim(text, rule, None, {}, used)
    mean_a, mean_b = series_a.loc[both].mean(), series_b.loc[both].mean()
    diff = (mean_a - mean_b).to_numpy()
    evidence = {
        label_a: round(float(mean_a[0]), 2),
        label_b: round(float(mean_b[0]), 2),
        "difference": round(float(diff[0]), 2),
    }
    return _claim(text, rule, diff, evidence, used)


def _best_claim(text: str, v: pd.DataFrame, fraction: float, expected: tuple[str, float]) -> dict:
    """Claim that ``expected`` (model, FT-Rate) has the best mIoU averaged over frames."""
    label = row_label(*expected)
    rule = (f"{label}'s mIoU averaged over frames minus the best other row's", ">", 0, POINTS)
    means = _row_means(v, fraction)
    used = decided_on(v, _select(v, label_percent=fraction).index, EVERY)
    if expected not in means.index or len(means) < 2:
        return _claim(text, rule, None, {}, used)
    margin = (means.loc[expected] - means.drop(expected).max(axis=0)).to_numpy()
    evidence = {
        "best (model, FT-Rate, mean mIoU)": _best_row(v, fraction),
        f"{label} minus the best other row (points)": round(float(margin[0]), 2),
    }
    return _claim(text, rule, margin, evidence, used)


def _competitive(v: pd.DataFrame, rich: float) -> dict:
    utae = _series(v, "U-TAE", UTAE, rich)
    means = _row_means(v, rich)
    gap = None if utae.empty else (means.max(axis=0) - utae.mean()).to_numpy()
    return _claim(
        f"U-TAE stays competitive at full labels ({rich:g} %).",
        (
            "the best row's mIoU averaged over frames minus U-TAE's (0 when U-TAE is the best), "
            "in points",
            "<=",
            5,
            POINTS,
        ),
        gap,
        {"gap to the best (points)": None if gap is None else round(float(gap[0]), 2)},
        decided_on(v, _select(v, label_percent=rich).index, EVERY),
    )


def _ft_rate_matters(v: pd.DataFrame) -> dict:
    gfm = v[v.index.get_level_values("model") != "U-TAE"]
    groups = gfm.groupby(level=["model", "label_percent", "timesteps"])
    several = groups.size() > 1
    spreads = (groups.max() - groups.min())[several]
    stat = None if spreads.empty else spreads.mean().to_numpy()
    group = pd.MultiIndex.from_arrays(
        [gfm.index.get_level_values(k) for k in ("model", "label_percent", "timesteps")]
    )
    return _claim(
        "FT-Rate is a hyperparameter worth tuning.",
        (
            "best minus worst FT-Rate's mIoU of a (model, fraction, t), averaged, in points",
            ">",
            2,
            POINTS,
        ),
        stat,
        {"mean spread (points)": None if stat is None else round(float(stat[0]), 2)},
        decided_on(v, gfm.index[group.isin(several[several].index)], GFMS),
    )


def _mean_gain(v: pd.DataFrame, fraction: float) -> tuple[np.ndarray | None, list[Key]]:
    """Mean relative gain (percent) from the fewest frames above one to the most, over the
    (model, FT-Rate) rows at ``fraction``, and the cells it compares."""
    gains, cells = [], []
    rows = v.index.droplevel(["label_percent", "timesteps"]).unique()
    for model, ft in rows:
        curve = _series(v, model, ft, fraction)
        curve = curve[curve.index > 1]  # series proper: from the fewest frames above one
        if len(curve) > 1 and curve.iloc[0, 0] > 0:
            gains.append(curve.iloc[-1].to_numpy() / curve.iloc[0].to_numpy() - 1)
            cells += _keys(model, ft, fraction, [curve.index[0], curve.index[-1]])
    return (100 * np.mean(gains, axis=0) if gains else None), cells


def _longer_series(v: pd.DataFrame, poor: float, rich: float) -> dict:
    (g_poor, poor_cells), (g_rich, rich_cells) = _mean_gain(v, poor), _mean_gain(v, rich)
    stat, evidence = None, {}
    if poor != rich and g_poor is not None and g_rich is not None:
        stat = np.minimum(g_poor, g_poor - g_rich)
        evidence = {
            f"mean relative gain, {poor:g} % (%)": round(float(g_poor[0]), 1),
            f"same at {rich:g} % (%)": round(float(g_rich[0]), 1),
        }
    return _claim(
        "Longer series help most when labels are scarce.",
        (
            "the smaller of G, the mean relative mIoU gain (%) from the fewest frames above one "
            "to the most at the smallest fraction, and G minus the same gain at the largest "
            "fraction (a loss at both is no help)",
            ">",
            0,
            PERCENT,
        ),
        stat,
        evidence,
        decided_on(v, poor_cells + rich_cells if stat is not None else [], EVERY),
    )


def check_claims(s: pd.DataFrame, replicates: np.ndarray | None = None) -> list[dict]:
    """Every claim on summary ``s``; ``replicates``: (len(s), B) bootstrap replicates of its
    means in its row order (None: point verdicts)."""
    fractions = sorted(s.label_percent.unique())
    if not fractions:
        return []
    rich, poor = fractions[-1], fractions[0]
    v = _values(s, replicates)
    return [
        _frozen_lose(v, rich, sorted(s.timesteps.unique())),
        _best_claim(
            f"With abundant labels ({rich:g} %), CROMA with FT-Rate 0.1 is best.",
            v,
            rich,
            ("CROMA", 0.1),
        ),
        _mean_beats(
            f"With scarce labels ({poor:g} %), even frozen CROMA beats U-TAE.",
            v,
            poor,
            ("CROMA", 0.0),
            ("U-TAE", UTAE),
        ),
        _best_claim(
            f"With scarce labels ({poor:g} %), CROMA at FT-Rate 1.0 is best.",
            v,
            poor,
            ("CROMA", 1.0),
        ),
        _mean_beats(
            f"With scarce labels ({poor:g} %), fully tuned DINO also beats U-TAE.",
            v,
            poor,
            ("DINO", 1.0),
            ("U-TAE", UTAE),
        ),
        _competitive(v, rich),
        _ft_rate_matters(v),
        _longer_series(v, poor, rich),
    ]


def with_published(ours: list[dict], published: list[dict]) -> list[dict]:
    """``ours`` with each claim's point verdict and value on the published numbers."""
    return [
        c | {"published": {k: p[k] for k in ("verdict", "basis", "value", "interval")}}
        for c, p in zip(ours, published, strict=True)
    ]
