"""Official checkpoint layouts load strictly; wrong files fail with a clear error."""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
from pathlib import Path

import pytest
import torch

from gfmtune.models.catalog import CROMA_LARGE, Checkpoint
from gfmtune.models.checkpoints import CheckpointError, locate, read_checkpoint
from gfmtune.models.croma import CromaOpticalEncoder
from gfmtune.models.dino import DinoEncoder
from tests.models.official_layouts import croma_s2_encoder_shapes, dino_vits16_shapes, random_state


def croma_file(path: Path, dim: int, depth: int, mutate=None) -> dict[str, torch.Tensor]:
    s2 = random_state(croma_s2_encoder_shapes(dim, depth))
    if mutate:
        mutate(s2)
    other = {"w": torch.zeros(2)}
    torch.save({"s1_encoder": other, "s1_GAP_FFN": other, "s2_encoder": s2,
                "s2_GAP_FFN": other, "joint_encoder": other}, path)  # fmt: skip
    return s2


@pytest.mark.parametrize("size, dim, depth", [("base", 768, 12), ("large", 1024, 24)])
def test_croma_official_layout_loads_strictly(tmp_path: Path, size: str, dim: int, depth: int):
    path = tmp_path / f"CROMA_{size}.pt"
    s2 = croma_file(path, dim, depth)
    encoder = CromaOpticalEncoder(size)
    assert encoder.load_encoder_state(read_checkpoint(path, "croma"), str(path)) == []
    state = encoder.state_dict()
    assert set(state) == set(s2)
    for key in ("linear_input.weight", f"transformer.layers.{depth - 1}.1.net.3.weight"):
        assert torch.equal(state[key], s2[key])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop("transformer.layers.3.0.to_out.bias"), "missing 1 tensor"),
        (
            lambda s: s.update({"transformer.layers.0.0.to_qkv.bias": torch.zeros(192)}),
            "unexpected 1 tensor",
        ),
        (lambda s: s.update({"linear_input.weight": torch.zeros(64, 640)}), "misshaped 1 tensor"),
    ],
)
def test_croma_bad_file_is_a_clear_error(tmp_path: Path, mutate, message: str) -> None:
    path = tmp_path / "CROMA_tiny.pt"
    croma_file(path, 64, 4, mutate)
    encoder = CromaOpticalEncoder("tiny", out_indices=(0, 1, 2, 3))
    with pytest.raises(CheckpointError, match=message) as err:
        encoder.load_encoder_state(read_checkpoint(path, "croma"), str(path))
    assert str(path) in str(err.value)


def test_croma_file_without_s2_encoder(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"s1_encoder": {}}, path)
    with pytest.raises(CheckpointError, match="no 's2_encoder'"):
        read_checkpoint(path, "croma")


def catalog_entry(path: Path, layout: str) -> Checkpoint:
    """A catalog entry that ``path``'s current bytes match."""
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    return Checkpoint(path.stem, f"http://127.0.0.1/{path.name}", path.name, sha, len(data), layout)


def dino_teacher_file(path: Path, args: object = None) -> dict[str, torch.Tensor]:
    backbone = random_state(dino_vits16_shapes(), seed=1)
    teacher = {f"backbone.{k}": v for k, v in backbone.items()}
    teacher |= {"head.mlp.0.weight": torch.zeros(8, 384), "head.last_layer.weight_g": torch.ones(1)}
    args = argparse.Namespace(arch="vit_small") if args is None else args
    torch.save({"teacher": teacher, "student": teacher, "epoch": 99, "args": args}, path)
    return backbone


class TouchOnUnpickle:
    """Pickles to a call of ``Path.touch(target)``: unpickling it creates ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return Path.touch, (self.target,)


def test_dino_original_checkpoint_paper_setting_drops_qkv_bias(tmp_path, caplog) -> None:
    path = tmp_path / "B13_vits16_dino_0099_ckpt.pth"
    backbone = dino_teacher_file(path)
    encoder = DinoEncoder(qkv_bias=False)
    expected = catalog_entry(path, "dino_teacher")
    with caplog.at_level(logging.WARNING):
        state = read_checkpoint(path, "dino_teacher", expected)
        dropped = encoder.load_encoder_state(state, str(path))
    assert sorted(dropped) == sorted(f"blocks.{i}.attn.qkv.bias" for i in range(12))
    assert "dropped 12 tensor(s)" in caplog.text
    state = encoder.vit.state_dict()
    assert torch.equal(state["blocks.11.mlp.fc2.weight"], backbone["blocks.11.mlp.fc2.weight"])


def test_dino_corrected_setting_loads_every_tensor(tmp_path: Path) -> None:
    path = tmp_path / "torchgeo.pth"
    backbone = random_state(dino_vits16_shapes(), seed=2)
    torch.save(backbone, path)
    encoder = DinoEncoder(qkv_bias=True)
    assert encoder.load_encoder_state(read_checkpoint(path, "timm"), str(path)) == []
    state = encoder.vit.state_dict()
    assert set(state) == set(backbone)
    assert torch.equal(state["blocks.4.attn.qkv.bias"], backbone["blocks.4.attn.qkv.bias"])


def test_dino_misshaped_tensor_fails(tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    state = random_state(dino_vits16_shapes(bands=12))
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"patch_embed\.proj\.weight: file"):
        DinoEncoder(qkv_bias=True).load_encoder_state(read_checkpoint(path, "timm"), str(path))


def test_locate_names_file_url_digest_and_place(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        locate(CROMA_LARGE, tmp_path)
    text = str(err.value)
    assert str(tmp_path / "CROMA_large.pt") in text and CROMA_LARGE.url in text
    assert CROMA_LARGE.sha256 in text and "weights.dir" in text

    blob = tmp_path / "w.pt"
    blob.write_bytes(b"0123456789")
    good = catalog_entry(blob, "timm")
    assert locate(good, tmp_path) == blob
    with pytest.raises(CheckpointError, match="size mismatch, expected 11 bytes, got 10"):
        locate(Checkpoint("w", "u", "w.pt", good.sha256, 11, "timm"), tmp_path)
    with pytest.raises(
        CheckpointError, match=f"sha256 mismatch, expected {'00' * 32}, got {good.sha256}"
    ):
        locate(Checkpoint("w", "u", "w.pt", "00" * 32, 10, "timm"), tmp_path)


def test_pickled_payload_runs_when_unpickled(tmp_path: Path) -> None:
    """The payload of the tests below is live: a plain unpickle creates its marker file."""
    marker = tmp_path / "payload-ran"
    torch.save({"args": TouchOnUnpickle(marker)}, tmp_path / "evil.pth")
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert marker.exists()


def test_dino_teacher_file_not_matching_catalog_is_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "B13_vits16_dino_0099_ckpt.pth"
    dino_teacher_file(path)
    published = catalog_entry(path, "dino_teacher")
    marker = tmp_path / "payload-ran"
    dino_teacher_file(path, args=TouchOnUnpickle(marker))  # same name, altered content
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path, "dino_teacher", published)
    text = str(err.value)
    assert str(path) in text and "not unpickled" in text and published.sha256 in text
    assert hashlib.sha256(path.read_bytes()).hexdigest() in text
    assert not marker.exists(), "the payload ran"


def test_dino_teacher_file_unknown_to_catalog_is_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "my_dino.pth"
    marker = tmp_path / "payload-ran"
    dino_teacher_file(path, args=TouchOnUnpickle(marker))
    with pytest.raises(CheckpointError, match="not a catalogued checkpoint") as err:
        read_checkpoint(path, "dino_teacher")
    assert str(path) in str(err.value)
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("layout", ["croma", "timm"])
def test_tensor_layouts_never_unpickle_objects(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "CROMA_large.pt"
    marker = tmp_path / "payload-ran"
    torch.save({"s2_encoder": {"w": torch.zeros(1)}, "args": TouchOnUnpickle(marker)}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as err:
        read_checkpoint(path, layout)
    assert str(path) in str(err.value)
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("with_norm", [True, False])
def test_dino_file_with_or_without_the_unused_final_norm_loads(
    tmp_path: Path, caplog, qkv_bias: bool, with_norm: bool
) -> None:
    """torchgeo's file may lack ``norm.*``; the features never pass through that norm."""
    path = tmp_path / "torchgeo.pth"
    backbone = random_state(dino_vits16_shapes(), seed=3)
    if not with_norm:
        del backbone["norm.weight"], backbone["norm.bias"]
    torch.save(backbone, path)
    encoder = DinoEncoder(qkv_bias=qkv_bias)
    initial = encoder.vit.norm.weight.detach().clone()
    with caplog.at_level(logging.WARNING):
        dropped = encoder.load_encoder_state(read_checkpoint(path, "timm"), str(path))
    assert len(dropped) == (0 if qkv_bias else 12)
    state = encoder.vit.state_dict()
    for key, value in backbone.items():
        if key in state:
            assert torch.equal(state[key], value), key
    if with_norm:
        assert "left as initialised" not in caplog.text
    else:
        assert torch.equal(state["norm.weight"], initial)
        assert f"{path}: 2 unused tensor(s) not in the file" in caplog.text
        assert "norm.bias, norm.weight" in caplog.text
        # the features the decoder gets do not depend on the final norm
        x = torch.randn(1, 13, 224, 224)
        with torch.no_grad():
            before = encoder(x)
            encoder.vit.norm.weight.mul_(3.0)
            for a, b in zip(before, encoder(x), strict=True):
                assert torch.equal(a, b)


@pytest.mark.parametrize("key", ["blocks.11.norm1.weight", "pos_embed", "patch_embed.proj.bias"])
def test_dino_file_missing_a_used_tensor_fails_naming_the_file(tmp_path: Path, key: str) -> None:
    path = tmp_path / "torchgeo_cut.pth"
    backbone = random_state(dino_vits16_shapes())
    del backbone[key], backbone["norm.weight"], backbone["norm.bias"]
    torch.save(backbone, path)
    message = rf"{re.escape(str(path))}: .*missing 1 tensor\(s\), e\.g\. \['{re.escape(key)}'\]"
    with pytest.raises(CheckpointError, match=message):
        DinoEncoder(qkv_bias=True).load_encoder_state(read_checkpoint(path, "timm"), str(path))
