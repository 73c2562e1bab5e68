"""The frozen-encoder feature cache gives the uncached result and is shared; CROMA's evaluation
windows are cached, its random training crops not."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from gfmtune.data.dataset import PastisZarrDataset, model_frames
from gfmtune.models.policies import window_corners
from gfmtune.models.registry import build_model, get_spec
from gfmtune.pastis import TEST_FOLD, VAL_FOLD
from gfmtune.train import feature_cache, job
from gfmtune.train.feature_cache import ALL_FOLDS, CachedFeatures, FeatureCache
from gfmtune.train.feature_key import cache_key
from gfmtune.train.job import Cell, CellJob
from gfmtune.train.loop import evaluate
from tests.train.conftest import FAST, inputs, out_of_memory_once


def _job(base: Path, out: Path, cell: Cell, cache: Path | None, settings=FAST) -> CellJob:
    data = replace(inputs(base, cell.label_percent, cell.timesteps), feature_cache=cache)
    return CellJob(cell, data, settings, out, progress=False)


def test_cache_gives_the_uncached_result(train_data: Path, tmp_path: Path) -> None:
    cell = Cell("dino_tiny", 0.0, "100", 6)
    plain = _job(train_data, tmp_path / "plain", cell, None).run()
    cached = _job(train_data, tmp_path / "cached", cell, tmp_path / "cache").run()
    for key in ("miou", "miou_paper", "oa"):
        assert cached["test"][key] == pytest.approx(plain["test"][key], rel=1e-5)
    supports = {c: v["support"] for c, v in plain["test"]["per_class"].items()}
    assert supports == {c: v["support"] for c, v in cached["test"]["per_class"].items()}
    assert cached["best_epoch"] == plain["best_epoch"]
    a, b = (pd.read_csv(tmp_path / x / "history.csv") for x in ("plain", "cached"))
    assert a.train_loss.to_numpy() == pytest.approx(b.train_loss.to_numpy(), rel=1e-5)
    caches = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(caches) == 1 and (caches[0] / "complete.json").exists()
    arrays = sorted(caches[0].glob("level*.npy"))
    assert len(arrays) == 4  # one array per level: dino_tiny's 4 UPerNet levels
    rows = {np.load(a, mmap_mode="r").shape[0] for a in arrays}
    assert rows == {40}  # every patch of the store, so every label fraction can share it

    # another label fraction reuses the same cache: no array is written again
    before = {p: p.stat().st_mtime_ns for p in caches[0].iterdir()}
    _job(train_data, tmp_path / "ten", Cell("dino_tiny", 0.0, "10", 6), tmp_path / "cache").run()
    assert {p: p.stat().st_mtime_ns for p in caches[0].iterdir()} == before


def test_levels_round_to_bf16_alike_for_the_decoder_and_the_cache(train_data: Path) -> None:
    """timm's ViT keeps DINO's levels in fp32 under autocast (a cache twice the size of bf16's):
    ``encode`` rounds them to autocast's dtype, in the uncached path and for the cache alike."""
    model, spec, cpu, data = (
        _model(),
        get_spec("dino_tiny"),
        torch.device("cpu"),
        _store(train_data),
    )
    frames = model_frames(next(iter(DataLoader(data, 4)))["image"], data.normalise, cpu)
    cached = feature_cache.cached_levels(model, spec, frames, cpu, torch.bfloat16)
    assert {level.dtype for level in cached} == {torch.bfloat16}
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        uncached = spec.policy.predict(lambda x, size: model(x, size), frames)
        from_cache = spec.policy.eval_decoded(model.decode, cached, (32, 32))
    assert torch.equal(uncached, from_cache)


def test_bf16_cache_is_half_the_size_and_gives_the_uncached_result(
    train_data: Path, tmp_path: Path
) -> None:
    cell, bf16 = Cell("dino_tiny", 0.0, "100", 6), replace(FAST, precision="bf16", epochs=2)
    plain = _job(train_data, tmp_path / "plain", cell, None, bf16).run()
    cached = _job(train_data, tmp_path / "cached", cell, tmp_path / "cache", bf16).run()
    assert cached["test"] == plain["test"] and cached["best_epoch"] == plain["best_epoch"]
    (folder,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    levels = json.loads((folder / "index.json").read_text())["levels"]
    assert {level["dtype"] for level in levels} == {"torch.bfloat16"}


def test_cache_off_when_switched_off_and_for_trainable_encoders(train_data, tmp_path) -> None:
    cache = tmp_path / "cache"
    assert not FAST.eval_cache  # the default
    _job(train_data, tmp_path / "croma", Cell("croma_tiny", 0.0, "100", 6), cache).run()
    _job(train_data, tmp_path / "ft", Cell("dino_tiny", 0.1, "100", 6), cache).run()
    off = replace(FAST, feature_cache=False)
    _job(train_data, tmp_path / "off", Cell("dino_tiny", 0.0, "100", 6), cache, off).run()
    assert not cache.exists() or not any(cache.iterdir())


def _encoder_calls_per_evaluation(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make every evaluation of a job count its encoder calls into the returned list."""
    evaluate, counts = job.evaluate, []

    def counting(model, *args, **kwargs):
        calls = []
        hook = model.encoder.register_forward_hook(lambda *_: calls.append(1))
        try:
            return evaluate(model, *args, **kwargs)
        finally:
            hook.remove()
            counts.append(len(calls))

    monkeypatch.setattr(job, "evaluate", counting)
    return counts


def test_eval_cache_of_frozen_croma_gives_the_uncached_evaluation(
    train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen croma_tiny: its validation and test windows' features are cached once; every
    evaluation then decodes them without calling the encoder, with the uncached metrics."""
    calls = _encoder_calls_per_evaluation(monkeypatch)
    cell = Cell("croma_tiny", 0.0, "100", 6)
    plain = _job(train_data, tmp_path / "plain", cell, None).run()
    uncached_calls = list(calls)
    calls.clear()
    on = replace(FAST, eval_cache=True)  # off by default (disk at paper size)
    cached = _job(train_data, tmp_path / "cached", cell, tmp_path / "cache", on).run()
    assert len(uncached_calls) == 4 and min(uncached_calls) > 0  # 3 validations and the test
    assert calls == [0, 0, 0, 0]

    a, b = (tmp_path / x / "confusion_test.csv" for x in ("plain", "cached"))
    assert a.read_text() == b.read_text()
    for key in ("miou", "miou_paper", "oa"):
        assert cached["test"][key] == pytest.approx(plain["test"][key], rel=1e-6)
        assert cached["val_best"][key] == pytest.approx(plain["val_best"][key], rel=1e-6)
    h_plain, h_cached = (pd.read_csv(tmp_path / x / "history.csv") for x in ("plain", "cached"))
    for column in ("train_loss", "val_miou", "val_miou_paper", "val_oa"):
        np.testing.assert_allclose(h_cached[column], h_plain[column], rtol=1e-6)

    # one cache, of the validation and test patches only: training encodes its random crops
    (folder,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    ts = train_data / "timesteps" / "6.csv"
    evaluated = PastisZarrDataset(train_data / "s2.zarr", ts, (VAL_FOLD, TEST_FOLD))
    index = json.loads((folder / "index.json").read_text())
    assert index["patch_ids"] == [int(p) for p in evaluated.patch_ids]
    first = np.load(folder / index["levels"][0]["file"], mmap_mode="r")
    assert first.shape[:3] == (len(evaluated), 4, 6)  # 2 x 2 windows of 6 frames


def test_eval_cache_key_holds_the_window_geometry(train_data: Path) -> None:
    spec = get_spec("croma_tiny")
    model = build_model("croma_tiny", encoder_trainable=False)
    args = (spec, model, "digest", train_data / "timesteps" / "6.csv", "paper", "keep", None)
    keys = {
        cache_key(*args),
        cache_key(*args, window_corners((32, 32), 24)),
        cache_key(*args, window_corners((30, 30), 24)),
    }
    assert len(keys) == 3


# ---- the memory-mapped format: resume, corruption, workers, bf16, the old format -------------


def _store(train_data: Path) -> PastisZarrDataset:
    return PastisZarrDataset(train_data / "s2.zarr", train_data / "timesteps" / "6.csv", ALL_FOLDS)


def _model() -> torch.nn.Module:
    """dino_tiny with the same weights at every call."""
    torch.manual_seed(0)
    return build_model("dino_tiny", encoder_trainable=False).eval()


def _build(cache: FeatureCache, data: PastisZarrDataset) -> None:
    cache.build(_model(), get_spec("dino_tiny"), data, torch.device("cpu"), None, progress=False)


def _arrays(folder: Path) -> list[np.ndarray]:
    return [np.load(p) for p in sorted(folder.glob("level*.npy"))]


@pytest.fixture(scope="module")
def built(train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> FeatureCache:
    """An uninterrupted build of every patch's dino_tiny features."""
    cache = FeatureCache(tmp_path_factory.mktemp("built"), "key")
    _build(cache, _store(train_data))
    return cache


def test_interrupted_build_resumes_at_the_rows_not_done(
    train_data: Path, built: FeatureCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, data, calls = FeatureCache(tmp_path, "key"), _store(train_data), []
    encode = feature_cache.cached_levels

    def failing_after(k: int) -> Callable:
        def levels(model, spec, images, *args):
            calls.append(len(images))
            if len(calls) > k:
                raise KeyboardInterrupt  # as a kill between two batches
            return encode(model, spec, images, *args)

        return levels

    monkeypatch.setattr(feature_cache, "cached_levels", failing_after(3))
    with pytest.raises(KeyboardInterrupt):
        _build(cache, data)
    assert not cache.dir.exists() and not cache.complete
    done = np.frombuffer((cache.partial / "done.bin").read_bytes(), np.uint8)
    assert done.sum() == 3 * feature_cache.BUILD_BATCH and done[:12].all()

    calls.clear()
    monkeypatch.setattr(feature_cache, "cached_levels", failing_after(100))
    _build(cache, data)
    assert sum(calls) == len(data) - 12  # only the rows not done are computed
    assert cache.complete and not cache.partial.exists()
    for resumed, whole in zip(_arrays(cache.dir), _arrays(built.dir), strict=True):
        np.testing.assert_array_equal(resumed, whole)


def test_build_out_of_memory_encodes_fewer_patches_to_the_same_features(
    train_data: Path, built: FeatureCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    cache, sizes, encode = FeatureCache(tmp_path, "key"), [], feature_cache.cached_levels

    def levels(model, spec, images, *args):
        sizes.append(len(images))
        if len(sizes) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return encode(model, spec, images, *args)

    monkeypatch.setattr(feature_cache, "cached_levels", levels)
    with caplog.at_level(logging.WARNING):
        _build(cache, _store(train_data))
    assert sizes == [4] + [2] * 20  # the failed call, then halves of every batch of 4
    assert "out of GPU memory encoding 4 samples at a time: 2 at a time" in caplog.text
    for halved, whole in zip(_arrays(cache.dir), _arrays(built.dir), strict=True):
        np.testing.assert_array_equal(halved, whole)


def test_evaluation_from_cached_features_out_of_memory_halves_to_the_same_result(
    train_data: Path, built: FeatureCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, spec, cpu = _model(), get_spec("dino_tiny"), torch.device("cpu")
    loader = DataLoader(CachedFeatures(_store(train_data), built), batch_size=8)
    whole = evaluate(model, spec, loader, cpu, None, per_sample=True)
    sizes = out_of_memory_once(monkeypatch, model, "decode")
    halved = evaluate(model, spec, loader, cpu, None, per_sample=True)
    assert sizes == [8] + [4] * 10
    np.testing.assert_array_equal(halved.per_sample_numpy(), whole.per_sample_numpy())


def test_row_written_but_not_marked_done_is_computed_again(
    train_data: Path, built: FeatureCache, tmp_path: Path
) -> None:
    """A kill after a row's features but before its mark: the row is recomputed."""
    cache = FeatureCache(tmp_path, "key")
    shutil.copytree(built.dir, cache.partial)
    (cache.partial / "complete.json").unlink()
    marks = bytearray((cache.partial / "done.bin").read_bytes())
    marks[5] = 0
    (cache.partial / "done.bin").write_bytes(bytes(marks))
    spoiled = cache.partial / "level0.npy"
    array = np.load(spoiled, mmap_mode="r+")
    array[5] = 0  # the row as a kill mid-row could leave it
    array.flush()
    del array
    assert not FeatureCache(tmp_path, "key").complete
    _build(cache, _store(train_data))
    for resumed, whole in zip(_arrays(cache.dir), _arrays(built.dir), strict=True):
        np.testing.assert_array_equal(resumed, whole)


def test_truncated_array_is_set_aside_named_and_rebuilt(
    train_data: Path, built: FeatureCache, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = FeatureCache(tmp_path, "key")
    shutil.copytree(built.dir, cache.dir)
    bad = cache.dir / "level2.npy"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size - 100])
    assert not cache.complete
    _build(cache, _store(train_data))
    assert any(str(bad) in r.getMessage() and "expected from its header" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")  # fmt: skip
    (aside,) = tmp_path.glob("key.corrupt-*")
    assert (aside / "level2.npy").stat().st_size == bad.stat().st_size - 100
    assert cache.complete
    for rebuilt, whole in zip(_arrays(cache.dir), _arrays(built.dir), strict=True):
        np.testing.assert_array_equal(rebuilt, whole)


def test_old_per_patch_format_is_not_read(train_data: Path, tmp_path: Path) -> None:
    """A folder of the old format (a torch file per patch, complete.json of their sizes)."""
    cache = FeatureCache(tmp_path, "key")
    cache.dir.mkdir()
    torch.save([torch.zeros(6, 8, 2, 2)], cache.dir / "1.pt")
    sizes = {"1": (cache.dir / "1.pt").stat().st_size}
    (cache.dir / "complete.json").write_text(json.dumps({"patches": 1, "sizes": sizes}))
    assert not cache.complete
    spec, model = get_spec("dino_tiny"), build_model("dino_tiny")
    args = (spec, model, "digest", train_data / "timesteps" / "6.csv", "paper", "keep", None)
    assert cache_key(*args) != cache_key(*args, [(0, 0)])


def test_workers_read_the_rows_of_the_main_process(train_data: Path, built: FeatureCache) -> None:
    data = CachedFeatures(_store(train_data), built)
    assert data._arrays is None  # opened where read: each worker opens its own
    batches = [list(DataLoader(data, batch_size=8, num_workers=n)) for n in (2, 0)]
    for a, b in zip(*batches, strict=True):
        assert a["patch_id"].tolist() == b["patch_id"].tolist()
        for x, y in zip(a["features"], b["features"], strict=True):
            assert torch.equal(x, y)
    levels = feature_cache.cached_levels(
        _model(),
        get_spec("dino_tiny"),
        model_frames(data.base[3]["image"][None], data.base.normalise, torch.device("cpu")),
        torch.device("cpu"),
        None,
    )
    for read, computed in zip(data[3]["features"], levels, strict=True):
        assert torch.equal(read, computed[0])


def test_bf16_is_stored_as_its_bits() -> None:
    level = torch.randn(3, 2, 5).to(torch.bfloat16)
    stored = feature_cache.to_stored(level)
    assert stored.dtype == np.int16 and stored.shape == (3, 2, 5)
    back = feature_cache.from_stored(stored, torch.bfloat16)
    assert back.dtype == torch.bfloat16 and torch.equal(back, level)
    assert back.data_ptr() == stored.ctypes.data  # a view, no copy
