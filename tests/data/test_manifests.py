"""Label-split and timestep manifests follow the paper's rule and the corrected strategies."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gfmtune import pastis
from gfmtune.cli import main
from gfmtune.config import ConfigError, validate_config
from gfmtune.data import manifests as mf
from tests.workflow_helpers import REPO, job_counts, run_snakemake


def _floor_linspace(stop: int, num: int) -> list[int]:
    """int(linspace(0, stop, num)) in exact arithmetic."""
    return [int(Fraction(i * stop, num - 1)) for i in range(num)]


@pytest.mark.parametrize("n", [38, 43, 61, 35])
def test_paper_frames_nested_linspace(n: int) -> None:
    base = _floor_linspace(n - 1, 35)
    expected = {35: base}
    for small, big in ((25, 35), (15, 25), (6, 15)):
        expected[small] = [expected[big][j] for j in _floor_linspace(big - 1, small)]
    for t in (6, 15, 25, 35):
        assert mf.paper_frames(n, t).tolist() == expected[t]
    assert mf.paper_frames(n, 1).tolist() == [n - 1]
    assert set(expected[6]) <= set(expected[15]) <= set(expected[25]) <= set(expected[35])


def test_paper_frames_hand_example() -> None:
    assert mf.paper_frames(61, 6).tolist() == [0, 7, 19, 31, 44, 60]


def test_paper_frames_short_series_use_all_frames_as_base() -> None:
    # 20 frames: the base grid is frames 0..19; 25 is skipped; 15 and 6 nest by the same rule
    fifteen = _floor_linspace(19, 15)
    assert mf.paper_frames(20, 15).tolist() == fifteen
    assert mf.paper_frames(20, 6).tolist() == [fifteen[j] for j in _floor_linspace(14, 6)]
    assert mf.paper_frames(20, 20).tolist() == list(range(20))


@pytest.mark.parametrize("strategy", mf.TIMESTEP_STRATEGIES)
@pytest.mark.parametrize("n", [1, 5, 9, 20, 35, 38, 61])
def test_no_strategy_repeats_a_frame(strategy: str, n: int) -> None:
    for t in range(1, min(n, mf.PAPER_BASE_FRAMES) + 1):
        frames = mf.frames_for(strategy, n, t, seed=2, patch_id=7)
        assert len(frames) == t and np.all(np.diff(frames) > 0), (t, frames)
        assert frames[0] >= 0 and frames[-1] < n


@pytest.mark.parametrize(
    ("strategy", "n", "t", "message"),
    [
        ("paper", 61, 40, "t=40 with strategy 'paper' exceeds its base grid of 35 frames"),
        ("paper", 9, 15, "t=15 with strategy 'paper' exceeds the 9 frames of patch 7"),
        ("uniform", 3, 6, "t=6 with strategy 'uniform' exceeds the 3 frames of patch 7"),
        ("random", 5, 6, "t=6 with strategy 'random' exceeds the 5 frames of patch 7"),
        ("paper", 9, 0, "timesteps must be >= 1"),
        ("linear", 9, 3, "unknown timestep strategy 'linear'"),
    ],
)
def test_timesteps_that_would_repeat_frames_are_refused(
    strategy: str, n: int, t: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        mf.frames_for(strategy, n, t, seed=0, patch_id=7)


def test_more_than_35_frames_allowed_for_uniform_and_random() -> None:
    assert mf.frames_for("uniform", 61, 40, 0, 7).tolist() == mf.uniform_frames(61, 40).tolist()
    assert len(set(mf.frames_for("random", 61, 40, 0, 7))) == 40


def test_uniform_and_random_frames() -> None:
    assert mf.uniform_frames(10, 5).tolist() == [1, 3, 5, 7, 9]
    small, big = mf.random_frames(40, 6, 0, 123), mf.random_frames(40, 15, 0, 123)
    assert set(small) <= set(big) and len(set(big)) == 15 and np.all(np.diff(big) > 0)
    assert not np.array_equal(small, mf.random_frames(40, 6, 1, 123))
    assert np.array_equal(small, mf.random_frames(40, 6, 0, 123))


def _labels(classes_per_patch: list[dict[int, int]], size: int = 6) -> np.ndarray:
    """Label maps with the given class -> pixel counts (rest void)."""
    out = np.full((len(classes_per_patch), size * size), pastis.VOID_CLASS, np.uint8)
    for i, counts in enumerate(classes_per_patch):
        pos = 0
        for c, k in counts.items():
            out[i, pos : pos + k] = c
            pos += k
    return out.reshape(-1, size, size)


def test_paper_split_rule() -> None:
    # fold order puts the fold-1 patches (store positions 1, 2, 4) first
    fold = np.array([2, 1, 1, 3, 1, 4, 2, 3, 1, 2, 5])
    patches = [
        {1: 36},  # 0 fold 2
        {1: 30, 2: 6},  # 1 fold 1
        {1: 36},  # 2 fold 1
        {3: 13, 1: 23},  # 3 fold 3: class 3 above 1/3 of its pixels
        {2: 10, 1: 26},  # 4 fold 1: class 2 below 1/3
        {5: 36},  # 5 fold 4 (validation: never chosen)
        {2: 20, 0: 16},  # 6 fold 2: class 2 above 1/3, class 0 above 1/3
        {3: 36},  # 7 fold 3
        {1: 36},  # 8 fold 1
        {4: 12, 1: 4},  # 9 fold 2: class 4 = 12/16 of the non-void pixels
        {6: 36},  # 10 fold 5
    ]
    splits = mf.label_splits(fold, _labels(patches), [10, 50, 100], "paper")
    # training order: fold 1 (1, 2, 4, 8), fold 2 (0, 6, 9), fold 3 (3, 7) -> 9 patches
    assert splits[100].tolist() == [1, 2, 4, 8, 0, 6, 9, 3, 7]
    # 10 %: int(0.9) = 0 kept; then per class 0..18 the first remaining patch above 1/3:
    # class 0 -> 6 (also covers 2), class 1 -> 1, class 3 -> 3, class 4 -> 9
    assert splits[10].tolist() == [6, 1, 3, 9]
    # 50 %: first 4 (1, 2, 4, 8) cover class 1; class 0 -> 6; 3 -> 3; 4 -> 9
    assert splits[50].tolist() == [1, 2, 4, 8, 6, 3, 9]


@pytest.mark.parametrize("strategy", ["stratified", "random"])
def test_seeded_strategies_are_nested(tiny_store: Path, strategy: str) -> None:
    ds = mf.open_store(tiny_store)
    fold, labels = ds.fold.values, ds.label.values
    splits = mf.label_splits(fold, labels, [10, 50, 100], strategy, seed=4)
    n_train = int(np.isin(fold, pastis.TRAIN_FOLDS).sum())
    assert [len(splits[p]) for p in (10, 50, 100)] == [1, n_train // 2, n_train]
    assert set(splits[10]) <= set(splits[50]) <= set(splits[100])
    assert np.isin(fold[splits[100]], pastis.TRAIN_FOLDS).all()
    again = mf.label_splits(fold, labels, [50], strategy, seed=4)[50]
    assert np.array_equal(again, splits[50])
    other = mf.label_splits(fold, labels, [50], strategy, seed=5)[50]
    assert not np.array_equal(np.sort(other), np.sort(splits[50]))


def test_stratified_covers_more_classes_than_random(tiny_store: Path) -> None:
    ds = mf.open_store(tiny_store)
    fold, labels = ds.fold.values, ds.label.values

    def classes_covered(strategy: str, seed: int) -> int:
        idx = mf.label_splits(fold, labels, [30], strategy, seed)[30]
        return int((mf.class_pixels(labels[idx]).sum(0) > 0).sum())

    strat = [classes_covered("stratified", s) for s in range(5)]
    rand = [classes_covered("random", s) for s in range(5)]
    assert min(strat) >= max(rand) - 1 and np.mean(strat) > np.mean(rand), (strat, rand)


def test_cli_writes_manifests(tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "label_split"
    assert main(["manifests", "labels", "--store", str(tiny_store), "--out", str(out),
                 "--percents", "10", "100", "--strategy", "stratified"]) == 0  # fmt: skip
    ds = mf.open_store(tiny_store)
    full = pd.read_csv(out / "100.csv")
    assert list(full.columns) == ["patch_id", "fold"]
    train = ds.patch_id.values[np.isin(ds.fold.values, pastis.TRAIN_FOLDS)]
    assert sorted(full.patch_id) == sorted(train.tolist())
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.percent) == {10, 100} and len(summary) == 2 * 19
    np.testing.assert_allclose(summary.groupby("percent").pixel_share.sum(), 1, atol=1e-4)

    tdir = tmp_path / "timesteps"
    assert main(["manifests", "timesteps", "--store", str(tiny_store), "--out", str(tdir),
                 "--timesteps", "1", "5"]) == 0  # fmt: skip
    five = pd.read_csv(tdir / "5.csv")
    assert five.patch_id.tolist() == ds.patch_id.values.tolist()
    for i, row in five.iterrows():
        frames = np.array(row.frames.split(), dtype=int)
        n = int(ds.n_frames[i])
        assert frames.tolist() == mf.paper_frames(n, 5).tolist()
        dates = ds.dates[i].values[frames].astype("datetime64[D]")
        days = (dates - np.datetime64("2018-09-01")).astype(int)
        assert row.days.split() == [str(d) for d in days]
    one = pd.read_csv(tdir / "1.csv")
    assert one.frames.astype(int).tolist() == (ds.n_frames.values - 1).tolist()


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Zarr store not found"):
        mf.write_timesteps(tmp_path / "nope.zarr", tmp_path, [6], "paper")


# ---- the paper split's argsort variants -------------------------------------------------------

#: overlap of the first K = 14 / 145 / 727 (1 / 10 / 50 %) with the first K in fold order, as the
#: review measured it for each numpy build (issue 10)
REVIEW_OVERLAPS = {
    "identity": (14, 145, 727),
    "avx512": (0, 97, 685),
    "avx2": (0, 127, 703),
    "baseline": (1, 1, 1),
}


def _paper_store(n_per_fold: int = 485) -> tuple[np.ndarray, np.ndarray]:
    """Folds 1-3 of ``n_per_fold`` patches each (1,455 in all; the real per-fold sizes are not in
    REFERENCE) interleaved with folds 4-5 in store order; every patch is class 1 only, so no
    class needs a top-up and a split is exactly the argsort prefix."""
    fold = np.tile([3, 1, 4, 2, 5], n_per_fold)
    return fold, _labels([{1: 36}] * len(fold))


def test_review_overlaps_cover_every_variant() -> None:
    assert set(REVIEW_OVERLAPS) == set(mf.ARGSORT_VARIANTS)


@pytest.mark.parametrize("variant", list(mf.ARGSORT_VARIANTS))
def test_shipped_orders_reproduce_the_review_overlaps(variant: str) -> None:
    fold, labels = _paper_store()
    train = np.concatenate([np.flatnonzero(fold == f) for f in pastis.TRAIN_FOLDS])
    assert len(train) == mf.PAPER_N_TRAIN
    splits = mf.label_splits(fold, labels, [1, 10, 50], "paper", argsort=variant)
    overlaps = []
    for percent, k in ((1, 14), (10, 145), (50, 727)):
        assert len(splits[percent]) == k
        overlaps.append(len(set(splits[percent]) & set(train[:k])))
    assert tuple(overlaps) == REVIEW_OVERLAPS[variant]
    if variant in ("avx512", "avx2"):  # the 1 % split: the end of fold 3
        positions = np.flatnonzero(np.isin(train, splits[1]))
        assert positions.min() >= 1424 and positions.max() <= 1439, positions


def test_identity_variant_is_the_fold_order_rule() -> None:
    shipped = pd.read_csv(mf.ARGSORT_DIR / "identity.csv")["position"].to_numpy()
    assert np.array_equal(shipped, np.arange(mf.PAPER_N_TRAIN))
    assert np.array_equal(mf.argsort_order("identity", 9), np.arange(9))
    fold = np.array([2, 1, 1, 3, 1, 2, 3])
    labels = _labels([{1: 36}, {1: 36}, {1: 36}, {2: 36}, {1: 36}, {1: 36}, {3: 36}])
    default = mf.label_splits(fold, labels, [50, 100], "paper")
    explicit = mf.label_splits(fold, labels, [50, 100], "paper", argsort="identity")
    # fold order 1, 2, 4, 0, 5, 3, 6: 50 % keeps the first int(3.5) = 3; classes 2 and 3 top up
    assert default[50].tolist() == explicit[50].tolist() == [1, 2, 4, 3, 6]
    assert default[100].tolist() == explicit[100].tolist() == [1, 2, 4, 0, 5, 3, 6]


def test_top_up_takes_the_first_remaining_patch_in_fold_order() -> None:
    # class 2 covers positions 1 and 4; the order lists 4 before 1 but neither among the kept
    pixels = np.zeros((6, mf.N_REAL_CLASSES), int)
    pixels[:, 0] = 10
    pixels[[1, 4], 2] = 10
    order = np.array([5, 3, 4, 1, 0, 2])
    assert mf.paper_split(pixels, 34, order).tolist() == [5, 3, 1]


@pytest.mark.parametrize("variant", ["avx512", "avx2", "baseline"])
def test_missing_variant_file_names_it_and_the_command(variant: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        mf.argsort_order(variant, mf.PAPER_N_TRAIN, tmp_path)
    message = str(err.value)
    assert str(tmp_path / f"{variant}.csv") in message and repr(variant) in message
    assert "run `gfmtune argsort-orders`" in message
    assert ("on a CPU with AVX-512" in message) == (variant == "avx512")


def test_argsort_orders_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown argsort variant 'x86'"):
        mf.argsort_order("x86", 4)
    with pytest.raises(ValueError, match=r"orders 1455 training patches, this store has 9"):
        mf.argsort_order("baseline", 9)
    (tmp_path / "avx2.csv").write_text("position\n0\n2\n2\n")
    with pytest.raises(ValueError, match=r"avx2.csv: not a permutation of 0..2"):
        mf.argsort_order("avx2", 3, tmp_path)


def test_config_argsort_defaults_to_identity_and_is_an_enum() -> None:
    config = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    validate_config(config)
    assert config["manifests"]["argsort"] == "identity"
    config["manifests"]["argsort"] = "x86-simd-sort"
    with pytest.raises(ConfigError, match=r"manifests\.argsort"):
        validate_config(config)


def test_shipped_provenance_matches_each_order() -> None:
    for variant in mf.ARGSORT_VARIANTS:
        meta = yaml.safe_load((mf.ARGSORT_DIR / f"{variant}.yaml").read_text())
        assert meta["variant"] == variant and meta["n"] == mf.PAPER_N_TRAIN
        assert tuple(meta["first_k_in_fold_order"].values()) == REVIEW_OVERLAPS[variant]
        assert meta["generated"]["cpu_avx512"] == (variant == "avx512")


def test_workflow_plans_every_variant_as_main_split_and_as_split_variant(tmp_path: Path) -> None:
    variants = {name: {"argsort": name} for name in mf.ARGSORT_VARIANTS if name != "identity"}
    config = {"manifests": {"argsort": "avx512", "split_variants": variants}}
    done = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", config=config)
    assert done.returncode == 0, done.stderr
    assert "--strategy paper --seed 0 --argsort avx512" in done.stdout
    for name in variants:
        assert f"manifests/label_split~{name}/1.csv' --timesteps" in done.stdout, name
    counts = job_counts(done.stdout)
    assert counts["train"] == 140 and counts["train_variant"] == len(variants) * 70
