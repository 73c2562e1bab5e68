"""Issue 24's variants: MoCo on its pretraining's scale (``moco_scaled``: reflectance / 10000),
Prithvi resized to 224 px (``prithvi_224``), and whether a checkpoint's facts are confirmed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gfmtune.cli import main
from gfmtune.data.dataset import (
    Normaliser,
    PastisZarrDataset,
    ReflectanceScaler,
    model_frames,
    store_normaliser,
)
from gfmtune.data.manifests import write_timesteps
from gfmtune.models.catalog import (
    DINO_TORCHGEO,
    MOCO_TORCHGEO,
    PRITHVI_EO_V2_300M,
    Checkpoint,
)
from gfmtune.models.dino import DINO_BANDS
from gfmtune.models.params import weights_status
from gfmtune.models.policies import InputPolicy
from gfmtune.models.prithvi import PRETRAIN_GRID, PRITHVI_BANDS, PrithviEncoder, sincos_3d
from gfmtune.models.registry import REGISTRY, build_model, get_spec
from gfmtune.pastis import BANDS
from gfmtune.train.feature_key import cache_key

MISSING = ("B1", "B9", "B10")  # SSL4EO-S12's L1C bands that PASTIS lacks


def test_moco_scaled_is_moco_with_the_reflectance_scale() -> None:
    moco, scaled = get_spec("moco"), get_spec("moco_scaled")
    assert scaled.policy == replace(moco.policy, scale="reflectance")
    assert scaled.checkpoint == moco.checkpoint == MOCO_TORCHGEO
    tiny, scaled_tiny = get_spec("moco_tiny"), get_spec("moco_scaled_tiny")
    assert scaled_tiny.policy == replace(tiny.policy, scale="reflectance")
    # every other model keeps the standardisation (and its behaviour)
    scaled = {n for n, spec in REGISTRY.items() if spec.policy.scale != "standardise"}
    assert scaled == {"moco_scaled", "moco_scaled_tiny"}
    with pytest.raises(ValueError, match="scale"):
        InputPolicy("resize", 224, DINO_BANDS, scale="toa")


@pytest.fixture(scope="module")
def timesteps(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("variants")
    write_timesteps(tiny_store, out / "timesteps", [3], "paper")
    return out / "timesteps" / "3.csv"


@pytest.mark.parametrize("nodata", ["keep", "zero"])
def test_a_batch_through_moco_scaled_is_reflectance(
    tiny_store: Path, timesteps: Path, nodata: str
) -> None:
    """The store's int16 through the dataset's scaler and moco_scaled's band adaptation: exactly
    raw / 10000 (float32) in PASTIS's bands, 0 in B1, B9 and B10."""
    spec = get_spec("moco_scaled_tiny")
    ds = PastisZarrDataset.evaluation(
        tiny_store, timesteps, 4, nodata=nodata, scale=spec.policy.scale
    )
    assert isinstance(ds.normalise, ReflectanceScaler)
    raw = torch.stack([ds[k]["image"] for k in range(len(ds))])  # (B, T, 10, H, W) int16
    assert raw.dtype == torch.int16
    frames = model_frames(raw, ds.normalise, torch.device("cpu"))
    view, _ = spec.policy.train_view(frames, torch.zeros(raw.shape[0], *raw.shape[-2:]))
    expected = raw.float() / 10000
    if nodata == "zero":
        expected[raw == -10000] = 0.0
    for band, name in enumerate(DINO_BANDS):
        if name in MISSING:
            assert torch.equal(view[:, :, band], torch.zeros_like(view[:, :, band]))
        else:
            assert torch.equal(view[:, :, band], expected[:, :, BANDS.index(name)]), name
    # the numpy path (bench readers) gives the same float32
    np.testing.assert_array_equal(ds.normalise(raw.numpy()), frames.numpy())


def test_standardise_stays_the_normaliser(tiny_store: Path, timesteps: Path) -> None:
    default = PastisZarrDataset.evaluation(tiny_store, timesteps, 4)
    explicit = PastisZarrDataset.evaluation(tiny_store, timesteps, 4, scale="standardise")
    assert type(default.normalise) is type(explicit.normalise) is Normaliser
    raw = default[0]["image"]
    assert torch.equal(default.normalise.tensor(raw), explicit.normalise.tensor(raw))
    with pytest.raises(ValueError, match="input scale"):
        store_normaliser(default.reader.attrs, "paper", scale="toa")


def test_the_feature_key_tells_the_scalings_apart(tmp_path: Path) -> None:
    manifest = tmp_path / "3.csv"
    manifest.write_text("patch_id,frames,days\n")
    torch.manual_seed(0)
    model = build_model("moco_tiny", encoder_trainable=False)
    args = ("digest", manifest, "paper", "keep", None)
    moco, scaled = get_spec("moco_tiny"), get_spec("moco_scaled_tiny")
    assert cache_key(moco, model, *args) != cache_key(scaled, model, *args)
    # the scale alone changes the key (same name, weights, size and bands)
    rescaled = replace(moco, policy=replace(moco.policy, scale="reflectance"))
    assert cache_key(moco, model, *args) != cache_key(rescaled, model, *args)
    assert cache_key(moco, model, *args) == cache_key(get_spec("moco_tiny"), model, *args)


def test_prithvi_224_runs_on_the_pretraining_grid() -> None:
    spec = get_spec("prithvi_224")
    assert spec.policy == InputPolicy("resize", 224, PRITHVI_BANDS)
    assert spec.checkpoint == get_spec("prithvi").checkpoint == PRITHVI_EO_V2_300M
    assert spec.facts.runtime > get_spec("prithvi").facts.runtime
    assert get_spec("prithvi_224_tiny").policy == InputPolicy("resize", 64, PRITHVI_BANDS)
    # a 224 px frame: 14 x 14 tokens whose recomputed sin-cos embedding is the checkpoint's
    # frame 0 (the pretraining grid), so recomputing and interpolating agree there
    encoder = PrithviEncoder("tiny", (0, 1, 2, 3)).eval()
    pos = encoder.position_embedding(14, 14, torch.device("cpu"))[0]
    frame0 = sincos_3d(64, PRETRAIN_GRID)[: 14 * 14].float()
    assert torch.equal(pos, frame0)
    with torch.no_grad():
        levels = encoder(torch.randn(2, len(PRITHVI_BANDS), 224, 224))
    assert [tuple(level.shape) for level in levels] == [(2, 64, 14, 14)] * 4
    # the tiny model through its policy: resized to 64 (4 x 4 tokens), logits at the input size
    model = build_model("prithvi_224_tiny").eval()
    tiny = get_spec("prithvi_224_tiny")
    with torch.no_grad():
        logits = tiny.policy.predict(lambda v, s: model(v, s), torch.randn(1, 3, 10, 32, 32))
    assert logits.shape == (1, 20, 32, 32)


def test_weights_status_and_sources() -> None:
    assert weights_status(None) == "none"
    assert weights_status(DINO_TORCHGEO) == weights_status(MOCO_TORCHGEO) == "confirmed"
    assert weights_status(PRITHVI_EO_V2_300M) == "unconfirmed"
    assert "third-party" in PRITHVI_EO_V2_300M.source
    assert PRITHVI_EO_V2_300M.sha256.startswith("faab2c8b")
    plugin = Checkpoint("x", "https://example.org/x.pt", "x.pt", "0" * 64, 1, "timm")
    assert weights_status(plugin) == "unconfirmed"  # not confirmed unless said


def test_params_lists_the_variants_and_their_weights(tmp_path: Path) -> None:
    out = tmp_path / "params.csv"
    names = ["moco_tiny", "moco_scaled_tiny", "prithvi_tiny", "prithvi_224_tiny", "utae_tiny"]
    assert main(["params", "--models", *names, "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index("name")
    assert list(table.index) == names
    assert list(table.columns)[-1] == "weights" and set(table.weights) == {"none"}
    assert table.loc["moco_scaled_tiny", "model"] == "MoCo (reflectance)"
    assert table.loc["prithvi_224_tiny", "model"] == "Prithvi (224 px)"
    # the same network: the scaling and the input size change no parameter count
    for a, b in (("moco_tiny", "moco_scaled_tiny"), ("prithvi_tiny", "prithvi_224_tiny")):
        assert table.loc[a, "trainable_ft_pos"] == table.loc[b, "trainable_ft_pos"]
