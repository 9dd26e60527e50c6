"""Loading SAM checkpoint files: official key layout, resizing, and the one-line errors."""

import pytest
import torch
import torch.nn.functional as F
from sam_files import random_sam, write_sam_checkpoint
from segment_anything import sam_model_registry

from nnunet_autosam.experiment_planning.settings import EncoderSettings
from nnunet_autosam.model import encoders
from nnunet_autosam.model.encoders.base import load_sam_state_dict
from nnunet_autosam.model.encoders.sam_vit import FAMILY as SAM_VIT
from nnunet_autosam.model.encoders.sam_vit import build_image_encoder
from nnunet_autosam.model.network import build_sam_network
from nnunet_autosam.utilities.errors import InputError


@pytest.fixture(scope="module")
def vit_b_file(tmp_path_factory):
    return write_sam_checkpoint(tmp_path_factory.mktemp("weights") / "sam_vit_b_01ec64.pth", "vit_b")


@pytest.fixture
def tiny_file(tmp_path):
    return write_sam_checkpoint(tmp_path / "sam_tiny.pth", "tiny")


@pytest.mark.slow
def test_written_vit_b_checkpoint_has_the_official_key_layout():
    official = {k: v.shape for k, v in sam_model_registry["vit_b"]().state_dict().items()}
    ours = {k: v.shape for k, v in random_sam("vit_b").state_dict().items()}
    assert ours == official


def test_tiny_checkpoint_round_trip(tiny_file, monkeypatch):
    monkeypatch.setenv("nnUNet_SAM_weights", str(tiny_file.parent))
    network = build_sam_network(EncoderSettings("tiny", 1024, tiny_file.name), "autosam", 1, 4)
    saved = torch.load(tiny_file, weights_only=True)
    for key, value in network.encoder.state_dict().items():
        assert torch.equal(value, saved["image_encoder." + key]), key
    for key, value in network.head.transformer.state_dict().items():
        assert torch.equal(value, saved["mask_decoder.transformer." + key]), key
    assert torch.equal(
        network.head.output_hypernetworks_mlps[3].layers[0].weight,
        saved["mask_decoder.output_hypernetworks_mlps.3.layers.0.weight"],
    )
    assert network.identity["checkpoint_file"] == "sam_tiny.pth"
    assert len(network.identity["checkpoint_sha256"]) == 64


def test_a_medsam_style_file_wrapped_under_model_loads_the_same_weights(tiny_file, tmp_path, monkeypatch):
    """MedSAM's medsam_vit_b.pth is SAM's state dict under "model" (a training checkpoint's layout)."""
    wrapped = tmp_path / "medsam_tiny.pth"
    torch.save({"model": torch.load(tiny_file, weights_only=True), "epoch": 100}, wrapped)
    monkeypatch.setenv("nnUNet_SAM_weights", str(tmp_path))
    plain = build_sam_network(EncoderSettings("tiny", 128, tiny_file.name), "autosam", 1, 4)
    from_wrapped = build_sam_network(EncoderSettings("tiny", 128, wrapped.name), "autosam", 1, 4)
    for plain_part, wrapped_part in (
        (plain.encoder, from_wrapped.encoder),
        (plain.head.transformer, from_wrapped.head.transformer),
    ):
        expected = plain_part.state_dict()
        assert all(torch.equal(value, expected[key]) for key, value in wrapped_part.state_dict().items())


@pytest.mark.slow
def test_vit_b_checkpoint_loads_at_256_with_interpolated_position_tables(vit_b_file):
    saved = load_sam_state_dict(vit_b_file)
    encoder = build_image_encoder("vit_b", 256)
    SAM_VIT.load_encoder(encoder, "vit_b", saved, vit_b_file)

    expected_pos = F.interpolate(
        saved["image_encoder.pos_embed"].permute(0, 3, 1, 2), size=(16, 16), mode="bicubic", align_corners=False
    ).permute(0, 2, 3, 1)
    assert torch.allclose(encoder.pos_embed, expected_pos)
    global_block, window_block = encoder.blocks[2].attn, encoder.blocks[0].attn
    assert global_block.rel_pos_h.shape == (31, 64)  # 2 * 16 - 1 tokens at input 256 (127 at 1024)
    assert saved["image_encoder.blocks.2.attn.rel_pos_h"].shape == (127, 64)
    assert torch.equal(window_block.rel_pos_h, saved["image_encoder.blocks.0.attn.rel_pos_h"])  # 14-token windows
    assert torch.equal(encoder.patch_embed.proj.weight, saved["image_encoder.patch_embed.proj.weight"])
    with torch.no_grad():
        embedding = encoder(torch.randn(1, 3, 256, 256))
    assert embedding.shape == (1, 256, 16, 16) and torch.isfinite(embedding).all()


@pytest.mark.slow
def test_vit_b_file_for_a_vit_l_encoder_fails_in_one_line(vit_b_file):
    with pytest.raises(InputError) as error:
        build_sam_network(EncoderSettings("vit_l", 256, str(vit_b_file)), "linear", 1, 4)
    message = error.value.message
    assert "holds a SAM ViT vit_b / medsam_vit_b encoder" in message and "--encoder vit_b" in message
    assert "sam_vit_l_0b3195.pth" in message and "\n" not in message


def test_truncated_checkpoint_fails_in_one_line(tiny_file, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tiny_file.read_bytes()[: tiny_file.stat().st_size // 2])
    with pytest.raises(InputError, match="cannot be read .*truncated"):
        load_sam_state_dict(truncated)


def test_a_file_without_sam_weights_is_refused(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(2)}, other)
    with pytest.raises(InputError, match="not a SAM checkpoint"):
        load_sam_state_dict(other)


def test_missing_weights_folder_and_file_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_SAM_weights", raising=False)
    with pytest.raises(InputError, match="nnUNet_SAM_weights is not set: export"):
        SAM_VIT.resolve_checkpoint("vit_b", None)
    monkeypatch.setenv("nnUNet_SAM_weights", str(tmp_path))
    with pytest.raises(InputError, match="sam_vit_h_4b8939.pth not found: download it from https://"):
        SAM_VIT.resolve_checkpoint("vit_h", None)
    assert SAM_VIT.resolve_checkpoint("tiny", None) is None


def test_unknown_encoder_and_bad_input_size_are_refused():
    with pytest.raises(InputError, match="unknown encoder type 'vit_x'"):
        encoders.family("vit_x")
    with pytest.raises(InputError, match="not a multiple of 16"):
        build_image_encoder("tiny", 250)
