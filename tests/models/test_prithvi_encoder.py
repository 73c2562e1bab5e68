"""Prithvi-EO-2.0-300M through the encoder contract: the publisher's checkpoint layout (keys and
shapes of ``Prithvi_EO_V2_300M.pt``, from TerraTorch's ``prithvi_mae.py`` and the HF
``config.json``, not from our code), strict loading, the recomputed position embedding, the 4
output levels, one training step, the parameter table and the planned download."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from gfmtune.models.catalog import facts
from gfmtune.models.checkpoints import CheckpointError, read_checkpoint
from gfmtune.models.params import parameter_table
from gfmtune.models.prithvi import PRITHVI_BANDS, PrithviEncoder
from gfmtune.models.registry import build_model, get_spec
from gfmtune.pastis import BANDS
from tests.models.official_layouts import random_state, vit_block_shapes
from tests.workflow_helpers import job_counts, run_snakemake


def prithvi_mae_shapes(dim: int = 1024, depth: int = 24, dec_dim: int = 512,
                       dec_depth: int = 8, bands: int = 6, frames: int = 4,
                       grid: int = 14) -> dict[str, tuple]:  # fmt: skip
    """Keys and shapes of ``Prithvi_EO_V2_300M.pt`` (PrithviMAE: ``encoder`` PrithviViT,
    ``decoder`` MAEDecoder; img 224, patch (1, 16, 16), num_frames 4, in_chans 6)."""
    tokens = 1 + frames * grid * grid
    shapes = {
        "encoder.cls_token": (1, 1, dim), "encoder.pos_embed": (1, tokens, dim),
        "encoder.patch_embed.proj.weight": (dim, bands, 1, 16, 16),
        "encoder.patch_embed.proj.bias": (dim,),
    }  # fmt: skip
    for i in range(depth):
        shapes |= vit_block_shapes(f"encoder.blocks.{i}", dim)
    shapes |= {"encoder.norm.weight": (dim,), "encoder.norm.bias": (dim,)}
    shapes |= {
        "decoder.mask_token": (1, 1, dec_dim), "decoder.decoder_pos_embed": (1, tokens, dec_dim),
        "decoder.decoder_embed.weight": (dec_dim, dim), "decoder.decoder_embed.bias": (dec_dim,),
    }  # fmt: skip
    for i in range(dec_depth):
        shapes |= vit_block_shapes(f"decoder.decoder_blocks.{i}", dec_dim)
    shapes |= {
        "decoder.decoder_norm.weight": (dec_dim,), "decoder.decoder_norm.bias": (dec_dim,),
        "decoder.decoder_pred.weight": (16 * 16 * bands, dec_dim),
        "decoder.decoder_pred.bias": (16 * 16 * bands,),
    }  # fmt: skip
    return shapes


def published_sincos(dim: int, grid: tuple[int, int, int]) -> np.ndarray:
    """The publisher's ``get_3d_sincos_pos_embed`` as its code reads (numpy, tile/repeat):
    (t * h * w, dim), channels [w (6/16), h (6/16), t (4/16)], no CLS row."""
    t, h, w = grid

    def one_d(d: int, n: int) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
        out = np.einsum("m,d->md", np.arange(n, dtype=float), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    w_emb = np.tile(one_d(dim // 16 * 6, w), (t * h, 1))
    h_emb = np.tile(np.repeat(one_d(dim // 16 * 6, h), w, axis=0), (t, 1))
    t_emb = np.repeat(one_d(dim // 16 * 4, t), h * w, axis=0)
    return np.concatenate([w_emb, h_emb, t_emb], axis=1)


TINY = {"dim": 64, "depth": 4, "dec_dim": 32, "dec_depth": 2}


def tiny_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A file with the publisher's key names at prithvi_tiny's size, fixed embeddings as theirs."""
    state = random_state(prithvi_mae_shapes(**TINY))
    for key, dim in (("encoder.pos_embed", 64), ("decoder.decoder_pos_embed", 32)):
        rows = np.concatenate([np.zeros((1, dim)), published_sincos(dim, (4, 14, 14))])
        state[key] = torch.from_numpy(rows).float().unsqueeze(0)
    torch.save(state, path)
    return state


def test_paper_size_keys_and_shapes_match_the_published_layout() -> None:
    shapes = prithvi_mae_shapes()
    assert len(shapes) == 398
    assert sum(k.startswith("encoder.") for k in shapes) == 294
    # the published file's 331,625,472 elements: 330,419,712 parameters + the two fixed
    # position embeddings (785 x (1024 + 512) = 1,205,760)
    assert sum(int(np.prod(s)) for s in shapes.values()) == 331_625_472
    with torch.device("meta"):
        encoder = PrithviEncoder("300m")
    ours = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    published = {
        k.removeprefix("encoder."): s for k, s in shapes.items() if k.startswith("encoder.")
    }
    del published["pos_embed"]  # computed per grid, checked against the file when loading
    assert ours == published
    assert encoder.norm.eps == 1e-5 and encoder.blocks[0].norm1.eps == 1e-5  # nn.LayerNorm's
    with torch.device("meta"):
        levels = encoder(torch.empty(2, 6, 128, 128))
    assert [tuple(f.shape) for f in levels] == [(2, 1024, 8, 8)] * 4


def test_tiny_checkpoint_loads_strictly_and_drops_the_decoder(tmp_path: Path, caplog) -> None:
    path = tmp_path / "Prithvi_EO_V2_300M.pt"
    state = tiny_checkpoint(path)
    encoder = PrithviEncoder("tiny", (0, 1, 2, 3))
    with caplog.at_level(logging.INFO, logger="gfmtune.models.checkpoints"):
        tensors = read_checkpoint(path, "prithvi_mae")
    assert "dropped the 32 tensors of the MAE decoder" in caplog.text
    assert "decoder.decoder_blocks.0" in caplog.text
    dropped = encoder.load_encoder_state(tensors, str(path))
    assert dropped == ["pos_embed"]
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, state[f"encoder.{key}"]), key


def _remove(state: dict, key: str) -> None:
    del state[key]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: _remove(s, "encoder.blocks.1.attn.qkv.bias"), "missing 1 tensor"),
        (lambda s: s.update({"encoder.blocks.9.norm1.weight": torch.ones(64)}), "unexpected 1"),
        (lambda s: s.update({"encoder.cls_token": torch.ones(1, 1, 32)}), "misshaped 1 tensor"),
        (lambda s: s.update({"model.head.weight": torch.ones(3)}), "outside encoder.* and decoder"),
        (lambda s: _remove(s, "encoder.pos_embed"), "pos_embed is None"),
        (lambda s: s["encoder.pos_embed"].mul_(2), "not Prithvi's 3D sin-cos embedding"),
    ],
)
def test_bad_file_is_an_error_naming_it(tmp_path: Path, mutate, message: str) -> None:
    path = tmp_path / "Prithvi_EO_V2_300M.pt"
    state = tiny_checkpoint(path)
    mutate(state)
    torch.save(state, path)
    encoder = PrithviEncoder("tiny", (0, 1, 2, 3))
    with pytest.raises(CheckpointError, match=message) as err:
        encoder.load_encoder_state(read_checkpoint(path, "prithvi_mae"), str(path))
    assert str(path) in str(err.value)


def test_position_embedding_at_224_is_the_checkpoints_frame_0() -> None:
    encoder = PrithviEncoder("tiny", (0, 1, 2, 3))
    ours = encoder.position_embedding(14, 14, torch.device("cpu"))[0]
    frame0 = published_sincos(64, (4, 14, 14))[: 14 * 14]
    torch.testing.assert_close(ours, torch.from_numpy(frame0).float())
    native = encoder.position_embedding(8, 8, torch.device("cpu"))[0]
    torch.testing.assert_close(native, torch.from_numpy(published_sincos(64, (1, 8, 8))).float())


def test_levels_are_blocks_and_only_the_last_block_is_normalised() -> None:
    torch.manual_seed(0)
    encoder = PrithviEncoder("tiny", (0, 1, 2, 3)).eval()
    x = torch.randn(3, 6, 64, 96)
    with torch.no_grad():
        levels = encoder(x)
        tokens = encoder.patch_embed["proj"](x.unsqueeze(2)).flatten(2).transpose(1, 2)
        tokens = tokens + encoder.position_embedding(4, 6, x.device)
        tokens = torch.cat([encoder.cls_token.expand(3, -1, -1), tokens], dim=1)
        for i, block in enumerate(encoder.blocks):
            tokens = block(tokens)
            ref = encoder.norm(tokens) if i == 3 else tokens
            expect = ref[:, 1:].transpose(1, 2).reshape(3, 64, 4, 6)
            torch.testing.assert_close(levels[i], expect)
    early = PrithviEncoder("tiny", (0, 2))
    early.load_state_dict(encoder.state_dict())
    early.truncate()
    assert len(early.blocks) == 3
    with torch.no_grad():
        torch.testing.assert_close(early.eval()(x)[1], levels[2])  # block 2: not normalised
    with pytest.raises(ValueError, match="multiples of 16"):
        encoder(torch.randn(1, 6, 40, 48))


def test_policy_maps_pastis_bands_to_hls_order() -> None:
    spec = get_spec("prithvi")
    assert spec.policy.kind == "native" and spec.policy.deterministic_train_input
    assert PRITHVI_BANDS == ("B2", "B3", "B4", "B8A", "B11", "B12")
    x = torch.arange(10.0).view(1, 1, 10, 1, 1).expand(1, 1, 10, 16, 16)
    view, _ = spec.policy.train_view(x, torch.zeros(1, 16, 16, dtype=torch.long))
    assert view[0, 0, :, 0, 0].tolist() == [BANDS.index(b) for b in PRITHVI_BANDS]
    assert facts("prithvi").checkpoint.layout == "prithvi_mae"
    assert facts("prithvi").family == facts("prithvi_tiny").family == "Prithvi"


def test_tiny_trains_one_step() -> None:
    torch.manual_seed(0)
    spec, model = get_spec("prithvi_tiny"), build_model("prithvi_tiny")
    x, y = spec.policy.train_view(torch.randn(2, 3, 10, 32, 32), torch.randint(0, 19, (2, 32, 32)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.encoder.blocks[0].attn.qkv.weight.clone()
    loss = torch.nn.functional.cross_entropy(spec.policy.train_logits(model, x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert not torch.equal(before, model.encoder.blocks[0].attn.qkv.weight)


def test_params_lists_prithvi(tmp_path: Path) -> None:
    from gfmtune.cli import main

    out = tmp_path / "params.csv"
    assert main(["params", "--models", "prithvi_tiny", "--out", str(out)]) == 0
    row = parameter_table(["prithvi_tiny"]).iloc[0]
    assert out.read_text().splitlines()[1].startswith("prithvi_tiny,Prithvi,")
    assert row["trainable_ft_pos"] > row["trainable_ft0"] > 0


def test_dry_run_plans_the_prithvi_download(tmp_path: Path) -> None:
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", config={"models": ["prithvi"]})
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["weights"] == 1
    assert "gfmtune weights --checkpoint prithvi_eo_v2_300m" in result.stdout


def test_chunked_checkpointed_encoder_gives_the_same_gradients() -> None:
    x = torch.randn(2, 3, 6, 32, 32)

    def grads(plan: tuple[int | None, bool]) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model("prithvi_tiny").eval()
        model.set_memory_plan(*plan)
        model(x).square().mean().backward()
        return model.encoder.patch_embed["proj"].weight.grad

    torch.testing.assert_close(grads((2, True)), grads((None, False)), rtol=1e-4, atol=1e-7)
