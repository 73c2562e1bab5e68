"""``prithvi_time``: Prithvi-EO-2.0 over a cell's frames at once. The encoder is checked against
a reference forward written here from the published architecture (TerraTorch's
``prithvi_mae.py``: Conv3d patch embedding with tubelet 1, the 3D sin-cos embedding of
:func:`published_sincos`, a CLS token with the zero position row, timm-style pre-norm blocks,
the final norm on the last block only), in plain torch on the checkpoint's key names, not
through our modules; then padding invariance, T = 1 against ``prithvi``, the decoder plumbing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gfmtune.models.catalog import facts
from gfmtune.models.prithvi import PrithviEncoder
from gfmtune.models.registry import build_model, get_spec
from tests.models.official_layouts import random_state
from tests.models.test_prithvi_encoder import TINY, prithvi_mae_shapes, published_sincos
from tests.workflow_helpers import REPO, job_counts, run_snakemake

HEADS, DEPTH, DIM = 4, 4, 64  # prithvi_tiny's


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` tensors of a tiny file with the publisher's key names (prefix dropped,
    no ``pos_embed``); norms near 1 and sharper queries so that attention is far from uniform."""
    shapes = prithvi_mae_shapes(**TINY)
    state = random_state(shapes, seed)
    state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    del state["pos_embed"]
    for key in state:
        if "norm" in key and key.endswith("weight"):
            state[key] = 1 + 5 * state[key]
        elif key.endswith("qkv.weight"):
            state[key] = 10 * state[key]
    return state


def joint_encoder(state: dict[str, torch.Tensor]) -> PrithviEncoder:
    encoder = PrithviEncoder("tiny", (0, 1, 2, 3), joint_time=True)
    encoder.load_state_dict(state)
    return encoder.eval()


def reference_levels(
    state: dict[str, torch.Tensor], x: torch.Tensor, pad_mask: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """The published forward of series x (B, T, 6, H, W) in plain torch, every block's output
    as (B * T, dim, h, w); padded frames (``pad_mask`` True) masked as attention keys."""
    b, t, _, h, w = x.shape
    gh, gw, hd = h // 16, w // 16, DIM // HEADS
    patches = F.conv3d(
        x.permute(0, 2, 1, 3, 4),  # (B, C, T, H, W)
        state["patch_embed.proj.weight"],
        state["patch_embed.proj.bias"],
        stride=(1, 16, 16),
    )
    tokens = patches.permute(0, 2, 3, 4, 1).reshape(b, t * gh * gw, DIM)  # row-major t, h, w
    tokens = tokens + torch.from_numpy(published_sincos(DIM, (t, gh, gw))).float()
    tokens = torch.cat([state["cls_token"].expand(b, 1, DIM), tokens], dim=1)
    keep = torch.ones(b, tokens.shape[1], dtype=torch.bool)
    if pad_mask is not None:
        keep[:, 1:] = ~pad_mask.repeat_interleave(gh * gw, dim=1)
    levels = []
    for i in range(DEPTH):

        def norm(v: torch.Tensor, name: str, p: str = f"blocks.{i}.") -> torch.Tensor:
            return F.layer_norm(v, (DIM,), state[f"{p}{name}.weight"], state[f"{p}{name}.bias"])

        def linear(v: torch.Tensor, name: str, p: str = f"blocks.{i}.") -> torch.Tensor:
            return F.linear(v, state[f"{p}{name}.weight"], state[f"{p}{name}.bias"])

        qkv = linear(norm(tokens, "norm1"), "attn.qkv")
        q, k, v = qkv.view(b, -1, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) / hd**0.5
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, DIM)
        tokens = tokens + linear(mixed, "attn.proj")
        tokens = tokens + linear(F.gelu(linear(norm(tokens, "norm2"), "mlp.fc1")), "mlp.fc2")
        out = norm(tokens, "norm", p="") if i == DEPTH - 1 else tokens
        levels.append(out[:, 1:].reshape(b, t, gh, gw, DIM).permute(0, 1, 4, 2, 3).flatten(0, 1))
    return levels


def test_joint_forward_matches_the_published_architecture() -> None:
    state = tiny_state()
    x = torch.randn(2, 5, 6, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = joint_encoder(state)(x)
    ref = reference_levels(state, x)
    assert [tuple(level.shape) for level in ours] == [(10, DIM, 2, 3)] * 4
    for mine, theirs in zip(ours, ref, strict=True):
        assert (mine - theirs).abs().max() < 1e-5
    # attention across time: another frame changes frame 0's tokens
    other = x.clone()
    other[:, 3] = torch.randn_like(other[:, 3])
    with torch.no_grad():
        changed = joint_encoder(state)(other)[1]
    first = [level.view(2, 5, DIM, 2, 3)[:, 0] for level in (changed, ours[1])]
    assert not torch.allclose(*first)


def test_padded_frames_do_not_change_the_real_frames() -> None:
    state = tiny_state()
    gen = torch.Generator().manual_seed(2)
    short = torch.randn(1, 3, 6, 32, 32, generator=gen)
    full = torch.randn(1, 5, 6, 32, 32, generator=gen)
    padded = torch.cat([short, torch.randn(1, 2, 6, 32, 32, generator=gen) * 7], dim=1)  # junk
    batch = torch.cat([padded, full])
    pad_mask = torch.tensor([[False] * 3 + [True] * 2, [False] * 5])
    encoder = joint_encoder(state)
    with torch.no_grad():
        alone = [encoder(short), encoder(full)]
        together = encoder(batch, pad_mask)
    ref = reference_levels(state, batch, pad_mask)
    for level, (mine, theirs) in enumerate(zip(together, ref, strict=True)):
        assert (mine - theirs).abs().max() < 1e-5
        per_series = mine.view(2, 5, *mine.shape[1:])
        assert (per_series[0, :3] - alone[0][level]).abs().max() < 1e-5
        assert (per_series[1] - alone[1][level]).abs().max() < 1e-5
    with torch.no_grad():  # unmasked, the junk frames would change the real ones
        leaked = encoder(padded)[3].view(5, DIM, 2, 2)[:3]
    assert (leaked - alone[0][3]).abs().max() > 1e-3


@pytest.mark.parametrize("temporal", ["ltae", "mean", "max"])
def test_whole_model_ignores_padded_frames(temporal: str) -> None:
    torch.manual_seed(0)
    model = build_model("prithvi_time_tiny", temporal=temporal).eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 32, 32, generator=gen)
    junk = torch.randn(2, 3, 6, 32, 32, generator=gen)
    pad_mask = torch.zeros(2, 7, dtype=torch.bool)
    pad_mask[:, 4:] = True
    with torch.no_grad():
        plain = model(x)
        padded = model(torch.cat([x, junk], dim=1), pad_mask=pad_mask)
        model.set_memory_plan(7, False)  # one series a call: the mask is split with them
        chunked = model(torch.cat([x, junk], dim=1), pad_mask=pad_mask)
    assert (padded - plain).abs().max() < 1e-5
    assert (chunked - plain).abs().max() < 1e-5


def test_one_frame_is_prithvi() -> None:
    state = tiny_state()
    frame_by_frame = PrithviEncoder("tiny", (0, 1, 2, 3))
    frame_by_frame.load_state_dict(state)
    joint = joint_encoder(state)
    x = torch.randn(3, 6, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = frame_by_frame.eval()(x)
        as_frames = joint(x)  # (N, C, H, W): each frame alone, the same code path
        as_series = joint(x.unsqueeze(1))  # (B, 1, C, H, W)
    for e, f, s in zip(expected, as_frames, as_series, strict=True):
        assert torch.equal(e, f)
        torch.testing.assert_close(s, e, rtol=0, atol=1e-6)
    # whole models: same seed, same weights; T = 1 gives prithvi's logits, T = 3 does not
    models = {}
    for name in ("prithvi_tiny", "prithvi_time_tiny"):
        torch.manual_seed(0)
        models[name] = build_model(name).eval()
    ours, theirs = models["prithvi_time_tiny"].state_dict(), models["prithvi_tiny"].state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs) and ours.keys() == theirs.keys()
    with torch.no_grad():
        one, three = torch.randn(2, 1, 10, 32, 32), torch.randn(2, 3, 10, 32, 32)
        view = get_spec("prithvi_tiny").policy.eval_input
        a, b = (models[n](view(one)) for n in ("prithvi_tiny", "prithvi_time_tiny"))
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
        a, b = (models[n](view(three)) for n in ("prithvi_tiny", "prithvi_time_tiny"))
        assert (a - b).abs().max() > 1e-4


def test_position_embedding_of_four_frames_is_the_checkpoints() -> None:
    encoder = PrithviEncoder("tiny", (0, 1, 2, 3), joint_time=True)
    pos = encoder.position_embedding(14, 14, torch.device("cpu"), frames=4)[0]
    torch.testing.assert_close(pos, torch.from_numpy(published_sincos(DIM, (4, 14, 14))).float())
    assert encoder.position_embedding(8, 8, torch.device("cpu"), frames=35).shape == (1, 2240, DIM)


def test_paper_size_entry_shares_prithvis_encoder_and_checkpoint() -> None:
    assert facts("prithvi_time").checkpoint == facts("prithvi").checkpoint
    assert facts("prithvi_time").family == facts("prithvi_time_tiny").family
    assert facts("prithvi_time").family != facts("prithvi").family  # its own table row
    assert get_spec("prithvi_time").policy == get_spec("prithvi").policy
    with torch.device("meta"):
        encoder = get_spec("prithvi_time").build_encoder()
        frames = PrithviEncoder("300m")
        levels = encoder(torch.empty(1, 35, 6, 128, 128))  # 1 + 35 x 64 tokens
    assert encoder.joint_time and not frames.joint_time
    assert encoder.state_dict().keys() == frames.state_dict().keys()
    assert [tuple(level.shape) for level in levels] == [(35, 1024, 8, 8)] * 4


def test_chunked_checkpointed_series_give_the_same_gradients() -> None:
    x = torch.randn(3, 4, 6, 32, 32)

    def grads(plan: tuple[int | None, bool]) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model("prithvi_time_tiny").eval()
        model.set_memory_plan(*plan)
        model(x).square().mean().backward()
        return model.encoder.patch_embed["proj"].weight.grad

    reference = grads((None, False))
    for plan in [(8, True), (2, False)]:  # two series a call; one (fewer frames than T)
        torch.testing.assert_close(grads(plan), reference, rtol=1e-4, atol=1e-7)


def test_wrong_inputs_are_refused() -> None:
    joint, frames = joint_encoder(tiny_state()), PrithviEncoder("tiny", (0, 1, 2, 3))
    with pytest.raises(ValueError, match="takes"):
        frames(torch.randn(1, 2, 6, 32, 32))
    with pytest.raises(ValueError, match="takes"):
        joint(torch.randn(2, 6, 32, 32), torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        joint(torch.randn(1, 2, 6, 32, 32), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one unpadded"):
        joint(torch.randn(1, 2, 6, 32, 32), torch.ones(1, 2, dtype=torch.bool))


def test_overlay_plans_prithvi_time_beside_prithvi(tmp_path: Path) -> None:
    """config/prithvi_time.yaml on the demo: both tiny Prithvi rows in one run."""
    overlays = [str(REPO / "config" / name) for name in ("demo.yaml", "prithvi_time.yaml")]
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", *overlays)
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout)["train"] == 2 * 3 * 2 * 3  # GFMs x FT-Rates x fractions x t
    for model in ("prithvi_tiny", "prithvi_time_tiny"):
        assert f"results/prithvi_time/cells/model~{model}/ft_rate~0/" in result.stdout
