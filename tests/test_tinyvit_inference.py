"""The inference form of the frozen TinyViT gives the package module's embedding, and is never trained."""

import copy

import pytest
import torch

from nnunet_autosam.experiment_planning.settings import EncoderSettings
from nnunet_autosam.model.encoders.base import load_sam_state_dict
from nnunet_autosam.model.encoders.lite_medsam import FAMILY
from nnunet_autosam.model.encoders.tinyvit_inference import inference_form, uses_inference_form
from nnunet_autosam.model.network import build_sam_network

LITE = EncoderSettings("lite_medsam", 256)


@pytest.mark.slow
def test_inference_form_matches_the_package_module_on_the_installed_weights():
    reference = FAMILY.build_encoder("lite_medsam", 256)
    path = FAMILY.resolve_checkpoint("lite_medsam", None)
    FAMILY.load_encoder(reference, "lite_medsam", load_sam_state_dict(path), path)
    reference.eval()
    fused = inference_form(copy.deepcopy(reference))
    assert uses_inference_form(fused) and not uses_inference_form(reference)
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference(images), fused(images)
    assert got.shape == expected.shape == (2, 256, 64, 64)
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()


def test_only_a_frozen_encoder_gets_the_inference_form():
    frozen = build_sam_network(LITE, "linear", 1, 4)
    trained = build_sam_network(LITE, "autosam", 1, 4, train_encoder=True)  # AutoSAMFullFTTrainer's network
    assert uses_inference_form(frozen.encoder)
    assert not uses_inference_form(trained.encoder)
    assert frozen.identity == {**trained.identity}  # same file, same identity hash
    trained.train()
    assert trained.encoder.training  # BatchNorm and attention biases train as in the package module
