"""The paper's conclusions (STUDY.md), each checked on a results summary as true or false with
the numbers that decide it; "undetermined" when the cells it needs are missing.

Input: :func:`gfmtune.results.tables.summarize` output (mean mIoU per cell, paper convention;
U-TAE has ft_rate -1). "Abundant" labels is the largest fraction, "scarce" the smallest; each
rule is stated in ``rule`` so a reader can see exactly what was tested, including the sign a
difference or gain needs (a "gain" that is a loss never counts as help).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

UTAE = -1.0


def _series(s: pd.DataFrame, model: str, ft: float, fraction: float) -> pd.Series:
    part = s[(s.model == model) & (s.ft_rate == ft) & (s.label_percent == fraction)]
    return part.set_index("timesteps")["mean"].sort_index()


def _row_means(s: pd.DataFrame, fraction: float) -> pd.Series:
    """mIoU averaged over frames per (model, FT-Rate) at ``fraction``."""
    return s[s.label_percent == fraction].groupby(["model", "ft_rate"])["mean"].mean()


def _best_row(s: pd.DataFrame, fraction: float) -> tuple[str, float, float] | None:
    """The (model, FT-Rate) with the highest mIoU averaged over frames at ``fraction``."""
    means = _row_means(s, fraction)
    if means.empty:
        return None
    (model, ft), value = means.idxmax(), means.max()
    return str(model), (float(ft) if ft >= 0 else None), round(float(value), 2)


def _claim(text: str, rule: str, verdict: bool | None, evidence: dict) -> dict:
    state = "undetermined" if verdict is None else ("true" if verdict else "false")
    return {"claim": text, "rule": rule, "verdict": state, "evidence": evidence}


def _beats(a: pd.Series, b: pd.Series, frames: list[int]) -> tuple[bool | None, dict]:
    both = [t for t in frames if t in a.index and t in b.index]
    if not both:
        return None, {}
    evidence = {f"t={t}": [round(float(a[t]), 2), round(float(b[t]), 2)] for t in both}
    return bool(all(a[t] > b[t] for t in both)), evidence


def _mean_beats(text: str, a: tuple[str, pd.Series], b: tuple[str, pd.Series]) -> dict:
    """Claim that a's mIoU averaged over the frames both have exceeds b's."""
    both = a[1].index.intersection(b[1].index)
    rule = f"{a[0]}'s mIoU averaged over frames minus {b[0]}'s > 0"
    if both.empty:
        return _claim(text, rule, None, {})
    mean_a, mean_b = float(a[1][both].mean()), float(b[1][both].mean())
    diff = mean_a - mean_b
    evidence = {a[0]: round(mean_a, 2), b[0]: round(mean_b, 2), "difference": round(diff, 2)}
    return _claim(text, rule, diff > 0, evidence)


def _best_claim(text: str, s: pd.DataFrame, fraction: float, expected: tuple[str, float]) -> dict:
    """Claim that ``expected`` (model, FT-Rate) has the best mIoU averaged over frames."""
    label = f"{expected[0]} {expected[1]:.1f}"
    rule = f"{label}'s mIoU averaged over frames minus the best other row's > 0"
    means = _row_means(s, fraction)
    if expected not in means.index or len(means) < 2:
        return _claim(text, rule, None, {})
    margin = float(means[expected] - means.drop(expected).max())
    evidence = {
        "best (model, FT-Rate, mean mIoU)": _best_row(s, fraction),
        f"{label} minus the best other row (points)": round(margin, 2),
    }
    return _claim(text, rule, margin > 0, evidence)


def check_claims(s: pd.DataFrame) -> list[dict]:
    fractions = sorted(s.label_percent.unique())
    if not fractions:
        return []
    rich, poor = fractions[-1], fractions[0]
    frames = sorted(s.timesteps.unique())
    utae_rich, utae_poor = _series(s, "U-TAE", UTAE, rich), _series(s, "U-TAE", UTAE, poor)
    claims = []

    verdicts, evidence = [], {}
    for model in ("CROMA", "DINO"):
        v, e = _beats(utae_rich, _series(s, model, 0.0, rich), [t for t in frames if t > 1])
        verdicts.append(v)
        evidence[f"U-TAE vs {model} 0.0"] = e
    known = [v for v in verdicts if v is not None]
    claims.append(
        _claim(
            f"With abundant labels ({rich:g} %), frozen GFMs lose to U-TAE whenever t > 1.",
            "U-TAE's mIoU minus CROMA 0.0's and minus DINO 0.0's > 0 at every t > 1",
            all(known) if known else None,
            evidence,
        )
    )

    text = f"With abundant labels ({rich:g} %), CROMA with FT-Rate 0.1 is best."
    claims.append(_best_claim(text, s, rich, ("CROMA", 0.1)))

    croma = ("CROMA 0.0", _series(s, "CROMA", 0.0, poor))
    text = f"With scarce labels ({poor:g} %), even frozen CROMA beats U-TAE."
    claims.append(_mean_beats(text, croma, ("U-TAE", utae_poor)))

    text = f"With scarce labels ({poor:g} %), CROMA at FT-Rate 1.0 is best."
    claims.append(_best_claim(text, s, poor, ("CROMA", 1.0)))

    claims.append(
        _mean_beats(
            f"With scarce labels ({poor:g} %), fully tuned DINO also beats U-TAE.",
            ("DINO 1.0", _series(s, "DINO", 1.0, poor)),
            ("U-TAE", utae_poor),
        )
    )

    best = _best_row(s, rich)
    gap = None if best is None or utae_rich.empty else round(best[2] - float(utae_rich.mean()), 2)
    claims.append(
        _claim(
            f"U-TAE stays competitive at full labels ({rich:g} %).",
            "the best row's mIoU averaged over frames minus U-TAE's <= 5 points (0 when U-TAE "
            "is the best)",
            None if gap is None else gap <= 5.0,
            {"gap to the best (points)": gap},
        )
    )

    spreads = (
        s[s.model != "U-TAE"]
        .groupby(["model", "label_percent", "timesteps"])["mean"]
        .agg(lambda v: v.max() - v.min() if len(v) > 1 else np.nan)
        .dropna()
    )
    claims.append(
        _claim(
            "FT-Rate is a hyperparameter worth tuning.",
            "best minus worst FT-Rate's mIoU of a (model, fraction, t), averaged, > 2 points",
            None if spreads.empty else bool(spreads.mean() > 2.0),
            {"mean spread (points)": None if spreads.empty else round(float(spreads.mean()), 2)},
        )
    )

    gains: dict[float, list[float]] = {}
    for fraction in (poor, rich):
        for model, ft in s[["model", "ft_rate"]].drop_duplicates().itertuples(index=False):
            curve = _series(s, model, ft, fraction)
            curve = curve[curve.index > 1]  # series proper: from the fewest frames above one
            if len(curve) > 1 and curve.iloc[0] > 0:
                gains.setdefault(fraction, []).append(curve.iloc[-1] / curve.iloc[0] - 1)
    verdict, evidence = None, {}
    if poor != rich and poor in gains and rich in gains:
        g_poor, g_rich = 100 * float(np.mean(gains[poor])), 100 * float(np.mean(gains[rich]))
        verdict = g_poor > 0 and g_poor - g_rich > 0  # a loss at both is no help at all
        evidence = {
            f"mean relative gain, {poor:g} % (%)": round(g_poor, 1),
            f"same at {rich:g} % (%)": round(g_rich, 1),
        }
    claims.append(
        _claim(
            "Longer series help most when labels are scarce.",
            "mean relative mIoU gain from the fewest frames above one to the most > 0 at the "
            "smallest fraction, and that gain minus the same at the largest fraction > 0",
            verdict,
            evidence,
        )
    )
    return claims


def to_markdown(claims: list[dict]) -> str:
    lines = ["| claim | verdict | rule | evidence |", "|---|---|---|---|"]
    for c in claims:
        evidence = "; ".join(f"{k}: {v}" for k, v in c["evidence"].items()) or "–"
        lines.append(f"| {c['claim']} | **{c['verdict']}** | {c['rule']} | {evidence} |")
    return "\n".join(lines) + "\n"
