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
"""

from __future__ import annotations

import operator

import numpy as np
import pandas as pd

from gfmtune.results.tables import KEYS, row_label
from gfmtune.results.uncertainty import LEVEL, interval

UTAE = -1.0
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


def _claim(
    text: str, rule: tuple[str, str, float], stat: np.ndarray | None, evidence: dict
) -> dict:
    """A claim decided on ``stat`` (column 0 the point value, then the replicates); ``rule``:
    (what the statistic is, ">" or "<=", threshold); undetermined without it, or when a value
    of it is not finite (it decides nothing)."""
    name, side, threshold = rule
    claim = {"claim": text, "rule": f"{name} {side} {threshold:g}"}
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
    }


def _frozen_lose(v: pd.DataFrame, rich: float, frames: list[int]) -> dict:
    utae = _series(v, "U-TAE", UTAE, rich)
    diffs, evidence = [], {}
    for model in ("CROMA", "DINO"):
        gfm = _series(v, model, 0.0, rich)
        both = [t for t in frames if t > 1 and t in utae.index and t in gfm.index]
        if both:
            diffs += [utae.loc[t] - gfm.loc[t] for t in both]
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
        ),
        np.min(diffs, axis=0) if diffs else None,
        evidence,
    )


def _mean_beats(text: str, a: tuple[str, pd.DataFrame], b: tuple[str, pd.DataFrame]) -> dict:
    """Claim that a's mIoU averaged over the frames both have exceeds b's."""
    both = a[1].index.intersection(b[1].index)
    rule = (f"{a[0]}'s mIoU averaged over frames minus {b[0]}'s", ">", 0)
    if both.empty:
        return _claim(text, rule, None, {})
    mean_a, mean_b = a[1].loc[both].mean(), b[1].loc[both].mean()
    diff = (mean_a - mean_b).to_numpy()
    evidence = {
        a[0]: round(float(mean_a[0]), 2),
        b[0]: round(float(mean_b[0]), 2),
        "difference": round(float(diff[0]), 2),
    }
    return _claim(text, rule, diff, evidence)


def _best_claim(text: str, v: pd.DataFrame, fraction: float, expected: tuple[str, float]) -> dict:
    """Claim that ``expected`` (model, FT-Rate) has the best mIoU averaged over frames."""
    label = row_label(*expected)
    rule = (f"{label}'s mIoU averaged over frames minus the best other row's", ">", 0)
    means = _row_means(v, fraction)
    if expected not in means.index or len(means) < 2:
        return _claim(text, rule, None, {})
    margin = (means.loc[expected] - means.drop(expected).max(axis=0)).to_numpy()
    evidence = {
        "best (model, FT-Rate, mean mIoU)": _best_row(v, fraction),
        f"{label} minus the best other row (points)": round(float(margin[0]), 2),
    }
    return _claim(text, rule, margin, evidence)


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
        ),
        gap,
        {"gap to the best (points)": None if gap is None else round(float(gap[0]), 2)},
    )


def _ft_rate_matters(v: pd.DataFrame) -> dict:
    gfm = v[v.index.get_level_values("model") != "U-TAE"]
    groups = gfm.groupby(level=["model", "label_percent", "timesteps"])
    several = groups.size() > 1
    spreads = (groups.max() - groups.min())[several]
    stat = None if spreads.empty else spreads.mean().to_numpy()
    return _claim(
        "FT-Rate is a hyperparameter worth tuning.",
        ("best minus worst FT-Rate's mIoU of a (model, fraction, t), averaged, in points", ">", 2),
        stat,
        {"mean spread (points)": None if stat is None else round(float(stat[0]), 2)},
    )


def _mean_gain(v: pd.DataFrame, fraction: float) -> np.ndarray | None:
    """Mean relative gain (percent) from the fewest frames above one to the most, over the
    (model, FT-Rate) rows at ``fraction``."""
    gains = []
    rows = v.index.droplevel(["label_percent", "timesteps"]).unique()
    for model, ft in rows:
        curve = _series(v, model, ft, fraction)
        curve = curve[curve.index > 1]  # series proper: from the fewest frames above one
        if len(curve) > 1 and curve.iloc[0, 0] > 0:
            gains.append(curve.iloc[-1].to_numpy() / curve.iloc[0].to_numpy() - 1)
    return 100 * np.mean(gains, axis=0) if gains else None


def _longer_series(v: pd.DataFrame, poor: float, rich: float) -> dict:
    g_poor, g_rich = _mean_gain(v, poor), _mean_gain(v, rich)
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
        ),
        stat,
        evidence,
    )


def check_claims(s: pd.DataFrame, replicates: np.ndarray | None = None) -> list[dict]:
    """Every claim on summary ``s``; ``replicates``: (len(s), B) bootstrap replicates of its
    means in its row order (None: point verdicts)."""
    fractions = sorted(s.label_percent.unique())
    if not fractions:
        return []
    rich, poor = fractions[-1], fractions[0]
    v = _values(s, replicates)
    croma = ("CROMA 0.0", _series(v, "CROMA", 0.0, poor))
    utae_poor = ("U-TAE", _series(v, "U-TAE", UTAE, poor))
    return [
        _frozen_lose(v, rich, sorted(s.timesteps.unique())),
        _best_claim(
            f"With abundant labels ({rich:g} %), CROMA with FT-Rate 0.1 is best.",
            v,
            rich,
            ("CROMA", 0.1),
        ),
        _mean_beats(
            f"With scarce labels ({poor:g} %), even frozen CROMA beats U-TAE.", croma, utae_poor
        ),
        _best_claim(
            f"With scarce labels ({poor:g} %), CROMA at FT-Rate 1.0 is best.",
            v,
            poor,
            ("CROMA", 1.0),
        ),
        _mean_beats(
            f"With scarce labels ({poor:g} %), fully tuned DINO also beats U-TAE.",
            ("DINO 1.0", _series(v, "DINO", 1.0, poor)),
            utae_poor,
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


def _notes(claims: list[dict]) -> list[str]:
    """How the verdicts were reached."""
    bases = {c["basis"] for c in claims}
    notes = []
    if BOOTSTRAP in bases:
        notes.append(
            f"Verdicts from a {BOOTSTRAP}: supported when the interval of the rule's statistic "
            f"lies entirely on the side the rule needs, contradicted when entirely on the "
            f"other, else {UNDISTINGUISHABLE} (the data cannot tell)."
        )
    if POINT in bases:
        notes.append(
            "Point estimates only: some cells of this run have no per-patch test counts "
            "(test_patches.npz, older runs), so no interval can be computed; true or false "
            "compare the point value of the rule's statistic with its threshold."
        )
    if any("published" in c for c in claims):
        notes.append(
            "The published numbers are one value per cell without per-patch data: on them a "
            "claim can only be checked as a point estimate (true or false, column published)."
        )
    return notes


def _value(c: dict) -> str:
    if c["value"] is None:
        return "–"
    bounds = "" if c["interval"] is None else " [{:.2f}, {:.2f}]".format(*c["interval"])
    return f"{c['value']:.2f}{bounds}"


def to_markdown(claims: list[dict]) -> str:
    """Notes on how the verdicts were reached, then one row per claim."""
    published = any("published" in c for c in claims)
    head = ["claim", "verdict", "rule", "value [95 % interval]"]
    head += ["published (point estimate)"] if published else []
    lines = [*(f"{n}\n" for n in _notes(claims)), "| " + " | ".join([*head, "evidence"]) + " |"]
    lines.append("|---" * (len(head) + 1) + "|")
    for c in claims:
        evidence = "; ".join(f"{k}: {v}" for k, v in c["evidence"].items()) or "–"
        verdict = f"**{c['verdict']}**" + (" (point estimate)" if c["basis"] == POINT else "")
        cells = [c["claim"], verdict, c["rule"], _value(c)]
        if published:
            cells.append(f"{c['published']['verdict']} ({_value(c['published'])})")
        lines.append("| " + " | ".join([*cells, evidence]) + " |")
    return "\n".join(lines) + "\n"
