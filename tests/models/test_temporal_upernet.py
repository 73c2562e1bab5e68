"""The temporal UPerNet: shapes at any series length, FT-Rate semantics, temporal modules."""

from __future__ import annotations

import pytest
import torch

from gfmtune.models.registry import build_model, get_spec
from tests.models.registry_cases import PAPER_ENCODERS, TINY_ENCODERS


@pytest.mark.parametrize("name", TINY_ENCODERS)
@pytest.mark.parametrize("t", [1, 6, 35])
def test_forward_shapes(name: str, t: int) -> None:
    spec = get_spec(name)
    model = build_model(name).eval()
    x = torch.randn(2, t, 10, 32, 32)
    with torch.no_grad():
        logits = spec.policy.predict(lambda v, size: model(v, size), x)
    assert logits.shape == (2, 20, 32, 32)


@pytest.mark.parametrize("name", PAPER_ENCODERS)
def test_paper_size_forward(name: str) -> None:
    spec = get_spec(name)
    model = build_model(name).eval()
    with torch.no_grad():
        logits = spec.policy.predict(lambda v, s: model(v, s), torch.randn(1, 2, 10, 128, 128))
    assert logits.shape == (1, 20, 128, 128)


def _step(model: torch.nn.Module, lr_encoder: float) -> None:
    groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("encoder.")]}]
    if model.encoder_trainable:
        groups.append({"params": list(model.encoder.parameters()), "lr": lr_encoder})
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05)
    x, y = torch.randn(2, 3, 12, 24, 24), torch.randint(0, 19, (2, 24, 24))
    loss = torch.nn.functional.cross_entropy(model(x), y, ignore_index=19)
    loss.backward()
    opt.step()


def test_frozen_encoder_gets_no_gradient_and_does_not_change() -> None:
    torch.manual_seed(0)
    model = build_model("croma_tiny", encoder_trainable=False)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = model.classifier.weight.clone()
    _step(model, 0.0)
    assert all(p.grad is None for p in model.encoder.parameters())
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head_before, model.classifier.weight)


def test_trainable_encoder_receives_gradients() -> None:
    torch.manual_seed(0)
    model = build_model("croma_tiny", encoder_trainable=True)
    before = model.encoder.linear_input.weight.clone()
    _step(model, 1e-4)
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert not torch.equal(before, model.encoder.linear_input.weight)


def test_linear_temporal_module() -> None:
    model = build_model("dino_tiny", temporal="linear", n_frames=6).eval()
    assert model.temporal.map.weight.shape == (1, 6)
    with torch.no_grad():
        out = model(torch.randn(1, 6, 13, 64, 64), (32, 32))
    assert out.shape == (1, 20, 32, 32)
    with pytest.raises(ValueError, match="needs n_frames"):
        build_model("dino_tiny", temporal="linear")


def test_frame_order_matters_and_encoder_runs_once_per_frame() -> None:
    torch.manual_seed(0)
    model = build_model("croma_tiny").eval()
    calls = []
    model.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = torch.randn(2, 5, 12, 24, 24)
    with torch.no_grad():
        model(x)
    assert calls == [10]  # one encoder call on all B x T frames


def test_memory_plan_gives_identical_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    model = build_model("croma_tiny", encoder_trainable=True).eval()  # no dropout noise
    x = torch.randn(2, 5, 12, 24, 24)

    def grads(frames_per_call, checkpointing):
        model.zero_grad()
        model.set_memory_plan(frames_per_call, checkpointing)
        out = model(x)
        out.square().mean().backward()
        return out.detach(), model.encoder.linear_input.weight.grad.clone()

    out_ref, grad_ref = grads(None, False)
    for plan in [(3, False), (3, True), (None, True)]:
        out, grad = grads(*plan)
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-7)


def test_corrected_variants() -> None:
    from gfmtune.models.catalog import MODELS
    from gfmtune.models.registry import REGISTRY

    assert set(MODELS) == set(REGISTRY)  # the torch-free catalog agrees with the registry
    assert {n for n, s in REGISTRY.items() if not s.has_encoder} == {
        n for n, f in MODELS.items() if f.from_scratch
    }
    # every paper-size encoder loads published weights; the toy ones are initialised at random
    assert {n for n, s in REGISTRY.items() if s.checkpoint} == set(PAPER_ENCODERS)
    native = get_spec("croma_native")
    assert native.policy.kind == "native" and native.policy.deterministic_train_input
    assert get_spec("dino_qkv").build_encoder().vit.blocks[0].attn.qkv.bias is not None
