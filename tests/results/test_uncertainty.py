"""Per-patch counts, bootstrap intervals (calibration, seeds) and claims decided on paired
replicates; cells without per-patch counts still aggregate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gfmtune.cli import main
from gfmtune.config import config_schema, validate_config
from gfmtune.pastis import N_CLASSES, VOID_CLASS
from gfmtune.results import claims, uncertainty
from gfmtune.results.command import write_results
from gfmtune.train import patch_counts
from gfmtune.train.metrics import metrics_from_confusion

N_PATCHES = 60


def _random_confusions(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 20, 20) sparse per-patch confusions: some classes absent in target and prediction."""
    m = rng.poisson(3.0, size=(n, N_CLASSES, N_CLASSES)) * (rng.random((n, 1, N_CLASSES)) < 0.6)
    m[:, VOID_CLASS, :] = 0  # void targets are dropped
    return m


def test_metrics_from_counts_equal_metrics_from_confusion() -> None:
    rng = np.random.default_rng(1)
    confusions = _random_confusions(rng, 50)
    confusions[:, 3, :] = confusions[:, :, 3] = 0  # a class never seen: NaN IoU
    counts = patch_counts.counts_from_confusions(np.arange(50), confusions)
    per_patch = np.stack(uncertainty.miou_from_counts(counts.tp, counts.fp, counts.fn), axis=1)
    for patch, conf in zip(per_patch, confusions, strict=True):  # vectorised over patches
        expected = metrics_from_confusion(conf)
        assert patch == pytest.approx([expected["miou"], expected["miou_paper"]])
    total = metrics_from_confusion(confusions.sum(0))
    summed = uncertainty.miou_from_counts(counts.tp.sum(0), counts.fp.sum(0), counts.fn.sum(0))
    assert summed == pytest.approx((total["miou"], total["miou_paper"]))
    empty = uncertainty.miou_from_counts(*np.zeros((3, N_CLASSES)))
    assert np.isnan(empty[0]) and empty[1] == 0


def test_counts_sum_to_the_confusion_and_drop_void_targets(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    confusions = rng.poisson(2.0, size=(5, N_CLASSES, N_CLASSES))  # void row not yet dropped
    counts = patch_counts.counts_from_confusions([7, 3, 9, 1, 4], confusions)
    kept = confusions.sum(0)
    kept[VOID_CLASS] = 0
    assert np.array_equal(counts.tp.sum(0), np.diag(kept))
    assert np.array_equal(counts.fp.sum(0), kept.sum(0) - np.diag(kept))
    assert np.array_equal(counts.fn.sum(0), kept.sum(1) - np.diag(kept))
    assert counts.tp[:, VOID_CLASS].sum() == counts.fn[:, VOID_CLASS].sum() == 0
    path = tmp_path / patch_counts.PATCH_FILE
    patch_counts.save_patch_counts(counts, path)
    back = patch_counts.load_patch_counts(path)
    assert back.patch_id.tolist() == [7, 3, 9, 1, 4] and np.array_equal(back.fp, counts.fp)
    assert [p.name for p in tmp_path.iterdir()] == [patch_counts.PATCH_FILE]  # no temp left


def test_bad_count_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / patch_counts.PATCH_FILE
    np.savez_compressed(path, patch_id=np.arange(3), tp=np.zeros((3, 19)), fp=np.zeros((3, 20)),
                        fn=np.zeros((3, 20)))  # fmt: skip
    with pytest.raises(ValueError, match=rf"{path}: tp must be .* \(3, 20\)"):
        patch_counts.load_patch_counts(path)
    path.write_text("not numpy")
    with pytest.raises(ValueError, match="not a readable per-patch count file"):
        patch_counts.load_patch_counts(path)


def test_intervals_cover_the_true_miou_at_the_stated_rate() -> None:
    """200 synthetic test sets of 150 patches drawn from a population whose mIoU is known
    (classes absent from many patches, false positives spread over all): the 95 % intervals
    cover it about 95 % of the time (binomial tolerance, 3 sd)."""
    rng = np.random.default_rng(3)
    rates = rng.uniform(5, 60, size=(3, N_CLASSES))  # expected tp, fp, fn per patch
    rates[:, VOID_CLASS] = [0, 20, 0]  # void: predicted on some pixels, never a target
    presence = rng.uniform(0.1, 0.9, size=N_CLASSES)  # share of patches showing a class
    truth = 100 * np.stack(uncertainty.miou_from_counts(*rates))
    datasets, n = 200, 150
    covered = np.zeros(2)
    for _ in range(datasets):
        shown = rng.gamma(2.0, 0.5, size=(n, 1, 1)) * (rng.random((n, 1, N_CLASSES)) < presence)
        spread = rng.gamma(2.0, 0.5, size=(n, 1, N_CLASSES)) * presence  # fp: every patch
        scale = np.concatenate([shown, spread, shown], axis=1)  # expectation = rates
        counts = rng.poisson(rates[None] * scale)  # (n, 3, C)
        weights = uncertainty.patch_weights(n, uncertainty.RESAMPLES, rng)
        low, high = uncertainty.interval(uncertainty.replicate_metrics(weights, counts))
        covered += (low <= truth) & (truth <= high)
    tolerance = 3 * np.sqrt(0.95 * 0.05 / datasets)
    assert covered / datasets == pytest.approx([0.95, 0.95], abs=tolerance)


def test_interval_is_the_percentile_one_corrected_for_median_bias() -> None:
    reps = np.random.default_rng(4).normal(size=(3, 999))
    centred = np.concatenate([np.median(reps, -1, keepdims=True), reps], axis=-1)
    assert np.array(uncertainty.interval(centred)) == pytest.approx(
        np.percentile(reps, [2.5, 97.5], axis=-1)
    )
    low, high = uncertainty.interval(centred + np.array([[0.5] + [0] * 999]))  # runs low
    assert (low > np.percentile(reps, 2.5, axis=-1)).all()
    assert (high > np.percentile(reps, 97.5, axis=-1)).all()
    identical = uncertainty.interval(np.zeros(401))  # two identical cells' difference
    assert identical == (0, 0)


# --- fabricated cells: metrics.json and test_patches.npz from per-patch confusions ---


def _targets(seed: int = 0, n: int = N_PATCHES) -> np.ndarray:
    """(n, 20) target pixels per class: each patch shows a few of the 19 real classes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(20, 200, size=(n, N_CLASSES)) * (rng.random((n, N_CLASSES)) < 0.3)
    pixels[:, VOID_CLASS] = 0
    return pixels


def _predict(targets: np.ndarray, accuracy: float, seed: int) -> np.ndarray:
    """(n, 20, 20) confusions: each target pixel right with ``accuracy``, else any other class."""
    rng = np.random.default_rng(seed)
    eye = np.eye(N_CLASSES)
    p = accuracy * eye + (1 - accuracy) * (1 - eye) / (N_CLASSES - 1)
    return rng.multinomial(targets, p[None].repeat(len(targets), 0))


def _cell(folder: Path, model: str, ft, percent: str, seed: int, confusions: np.ndarray) -> Path:
    path = folder / f"{model}_{ft}_{percent}_{seed}" / "metrics.json"
    path.parent.mkdir(parents=True)
    metrics = {"cell": {"model": model, "ft_rate": ft, "label_percent": percent,
                        "timesteps": 6, "seed": seed},
               "test": metrics_from_confusion(confusions.sum(0)),
               "best_epoch": 3, "wall_seconds": 10.0, "gpu_hours": 0.01}  # fmt: skip
    path.write_text(json.dumps(metrics))
    counts = patch_counts.counts_from_confusions(np.arange(len(confusions)), confusions)
    patch_counts.save_patch_counts(counts, path.parent / patch_counts.PATCH_FILE)
    return path


def _grid(folder: Path, croma: float, utae: float, same: bool = False) -> list[Path]:
    """CROMA 0.0 and U-TAE at 1 % and 100 %, t = 6, one seed: accuracies ``croma`` and
    ``utae`` on the same test patches (``same``: identical predictions)."""
    targets, cells = _targets(), []
    for percent in ("1", "100"):
        utae_conf = _predict(targets, utae, seed=1)
        croma_conf = utae_conf if same else _predict(targets, croma, seed=2)
        cells.append(_cell(folder, "croma", 0.0, percent, 0, croma_conf))
        cells.append(_cell(folder, "utae", None, percent, 0, utae_conf))
    return cells


def _scarce_croma_claim(run: Path) -> dict:
    checked = json.loads((run / "claims.json").read_text())
    (claim,) = [c for c in checked if c["claim"].endswith("even frozen CROMA beats U-TAE.")]
    return claim


@pytest.mark.parametrize(
    "croma, utae, same, verdict",
    [
        (0.7, 0.7, True, claims.UNDISTINGUISHABLE),  # two identical cells
        (0.9, 0.5, False, "supported"),  # against a clearly worse one
        (0.5, 0.9, False, "contradicted"),  # the data turned round: the verdict too
    ],
)
def test_paired_claim_verdicts(
    tmp_path: Path, croma: float, utae: float, same: bool, verdict: str
) -> None:
    write_results(_grid(tmp_path / "cells", croma, utae, same), tmp_path / "run", resamples=400)
    claim = _scarce_croma_claim(tmp_path / "run")
    assert claim["verdict"] == verdict and claim["basis"] == claims.BOOTSTRAP
    low, high = claim["interval"]
    assert low <= claim["value"] <= high
    assert claim["rule"].endswith("> 0") and claim["published"]["basis"] == claims.POINT
    md = (tmp_path / "run" / "claims.md").read_text()
    assert f"**{verdict}**" in md and f"[{low:.2f}, {high:.2f}]" in md


def test_pairing_decides_a_small_consistent_difference(tmp_path: Path) -> None:
    """CROMA = U-TAE but one more error per class on every third patch: the cells' own
    intervals overlap, the paired difference's does not include 0."""
    targets = _targets()
    utae = _predict(targets, 0.6, seed=1)
    croma = utae.copy()
    moved = np.minimum(np.diagonal(croma, axis1=1, axis2=2), 1)  # 1 right pixel -> class 0
    moved[np.arange(len(moved)) % 3 != 0] = 0
    idx = np.arange(N_CLASSES)
    croma[:, idx, idx] -= moved
    croma[:, :, 0] += moved
    cells = []
    for percent in ("1", "100"):
        cells += [_cell(tmp_path / "c", "croma", 0.0, percent, 0, croma),
                  _cell(tmp_path / "c", "utae", None, percent, 0, utae)]  # fmt: skip
    write_results(cells, tmp_path / "run", resamples=400)
    comparison = pd.read_csv(tmp_path / "run" / "tables" / "comparison.csv")
    scarce = comparison[comparison.label_percent == 1].set_index("model")
    assert scarce.loc["CROMA", "high"] > scarce.loc["U-TAE", "low"]  # intervals overlap
    assert _scarce_croma_claim(tmp_path / "run")["verdict"] == "contradicted"


def test_seeds_are_resampled_too(tmp_path: Path) -> None:
    """A cell whose two seeds differ widely: its interval spans both; identical seeds give the
    single run's interval."""
    targets = _targets()
    good, bad = _predict(targets, 0.9, seed=1), _predict(targets, 0.4, seed=2)
    cells = [_cell(tmp_path / "c", "utae", None, "1", s, c) for s, c in ((0, good), (1, bad))]
    cells += [_cell(tmp_path / "c", "utae", None, "100", s, good) for s in (0, 1)]
    write_results(cells, tmp_path / "run", resamples=400)
    table = pd.read_csv(tmp_path / "run" / "tables" / "miou.csv")
    runs = table.set_index(["label_percent", "seed"])
    spread = pd.read_csv(tmp_path / "run" / "tables" / "comparison.csv").set_index("label_percent")
    low, high = spread.loc[1, "low"], spread.loc[1, "high"]
    assert low < runs.loc[(1, 1), "miou_paper"] + 1 and high > runs.loc[(1, 0), "miou_paper"] - 1
    one = runs.loc[(100, 0)]
    assert (spread.loc[100, "low"], spread.loc[100, "high"]) == pytest.approx(
        (one.miou_paper_low, one.miou_paper_high), abs=0.01
    )
    assert (runs.miou_low <= runs.miou).all() and (runs.miou <= runs.miou_high).all()


def test_cells_without_counts_aggregate_with_point_verdicts(tmp_path: Path) -> None:
    cells = _grid(tmp_path / "cells", 0.9, 0.5)
    (cells[0].parent / patch_counts.PATCH_FILE).unlink()  # an older run: no per-patch counts
    write_results(cells, tmp_path / "run", resamples=200)
    tables = tmp_path / "run" / "tables"
    comparison = pd.read_csv(tables / "comparison.csv")
    missing = (comparison.model == "CROMA") & (comparison.label_percent == 1)
    assert comparison[missing][["low", "high", "paper_inside"]].isna().all().all()
    assert comparison[~missing][["low", "high"]].notna().all().all()
    assert set(comparison.paper_inside.dropna()) <= {"yes", "no"}
    md = (tables / "miou_100_1.md").read_text()
    assert md.count("[") == 3  # three cells with an interval, CROMA at 1 % without
    claim = _scarce_croma_claim(tmp_path / "run")
    assert (claim["verdict"], claim["basis"], claim["interval"]) == ("true", claims.POINT, None)
    assert "Point estimates only" in (tmp_path / "run" / "claims.md").read_text()


def test_count_files_must_match_metrics_and_patches(tmp_path: Path) -> None:
    cells = _grid(tmp_path / "cells", 0.9, 0.5)
    other = patch_counts.counts_from_confusions(np.arange(N_PATCHES) + 1,
                                               _predict(_targets(), 0.5, seed=1))  # fmt: skip
    patch_counts.save_patch_counts(other, cells[3].parent / patch_counts.PATCH_FILE)
    with pytest.raises(ValueError, match="test patches differ"):
        write_results(cells, tmp_path / "run")
    wrong = patch_counts.counts_from_confusions(np.arange(N_PATCHES),
                                               _predict(_targets(), 0.2, seed=5))  # fmt: skip
    patch_counts.save_patch_counts(wrong, cells[3].parent / patch_counts.PATCH_FILE)
    with pytest.raises(ValueError, match=r"counts give miou .* metrics\.json"):
        write_results(cells, tmp_path / "run")


def test_bootstrap_settings_agree_with_the_schema(tmp_path: Path) -> None:
    """results.bootstrap in the schema (what snakemake checks and passes on) has the command's
    defaults and bounds; too few resamples stop the command with a clear line."""
    bootstrap = config_schema()["properties"]["results"]["properties"]["bootstrap"]
    resamples = bootstrap["properties"]["resamples"]
    assert (resamples["default"], resamples["minimum"]) == (
        uncertainty.RESAMPLES,
        uncertainty.MIN_RESAMPLES,
    )
    assert bootstrap["properties"]["seed"]["default"] == 0
    config: dict = {}
    validate_config(config)
    assert config["results"]["bootstrap"] == {"resamples": uncertainty.RESAMPLES, "seed": 0}
    cells = [str(p) for p in _grid(tmp_path / "cells", 0.9, 0.5)]
    args = ["results", "--cells", *cells, "--out", str(tmp_path / "run"), "--resamples", "50"]
    assert main(args) == 1
    assert not (tmp_path / "run" / "claims.md").exists()
