"""The fast encoder path computes segment_anything's own encoder function, with the same weights and keys."""

import copy

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, Block

from nnunet_autosam.encoders.fast_attention import FastAttention, FastBlock, use_fast_attention, uses_fast_attention
from nnunet_autosam.encoders.sam_vit import build_image_encoder, resize_position_tables
from nnunet_autosam.network import build_sam_network
from nnunet_autosam.settings import EncoderSettings
from sam_files import random_sam

RELATIVE_TOLERANCE = 1e-4  # the fp32 bound stated in nnunet_autosam/encoders/fast_attention.py


def _loaded_encoder(encoder_type: str, input_size: int):
    """segment_anything's stock encoder at input_size with random SAM weights (pos tables resized as we load them)."""
    state = {k[len("image_encoder."):]: v for k, v in random_sam(encoder_type).state_dict().items()
             if k.startswith("image_encoder.")}
    encoder = build_image_encoder(encoder_type, input_size)
    encoder.load_state_dict(resize_position_tables(state, encoder))
    return encoder.eval()


def _assert_close(reference: torch.Tensor, fast: torch.Tensor) -> None:
    assert fast.shape == reference.shape
    error = (fast - reference).abs().max().item()
    assert error <= RELATIVE_TOLERANCE * reference.abs().max().item(), error


@pytest.mark.parametrize("encoder_type, input_size", [
    ("vit_b", 256),  # vit_b's shape: 12 heads of 64, 16x16 tokens padded to 28x28 for the 14-token windows
    ("tiny", 512),   # global attention on 32x32 tokens (rel_pos interpolated at run time), windows padded 32 -> 42
])
def test_fast_path_matches_segment_anything_forward(encoder_type, input_size):
    torch.manual_seed(0)
    reference = _loaded_encoder(encoder_type, input_size)
    fast = use_fast_attention(copy.deepcopy(reference))
    x = torch.randn(2, 3, input_size, input_size)
    with torch.no_grad():
        _assert_close(reference(x), fast(x))


def test_fast_attention_matches_on_a_non_square_grid_and_gradients_agree():
    torch.manual_seed(0)
    reference = _loaded_encoder("tiny", 256)
    fast = use_fast_attention(copy.deepcopy(reference))
    # tokens 12 x 20: windows padded on both axes (14 x 28), global attention on a non-square grid
    tokens = torch.randn(2, 12, 20, 64)
    outputs, grads = [], []
    for encoder in (reference, fast):
        encoder.zero_grad()
        x = tokens.clone().requires_grad_(True)
        out = x
        for block in encoder.blocks:
            out = block(out)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append([x.grad] + [p.grad for p in encoder.parameters() if p.grad is not None])
    _assert_close(outputs[0], outputs[1])
    assert len(grads[0]) == len(grads[1])
    for g_ref, g_fast in zip(*grads):
        _assert_close(g_ref, g_fast)


def test_state_dict_keys_and_tensors_are_unchanged():
    encoder = build_image_encoder("tiny", 256)
    keys = list(encoder.state_dict())
    parameters = {name: p.data_ptr() for name, p in encoder.named_parameters()}
    use_fast_attention(encoder)
    assert list(encoder.state_dict()) == keys
    assert {name: p.data_ptr() for name, p in encoder.named_parameters()} == parameters
    encoder.load_state_dict(build_image_encoder("tiny", 256).state_dict())  # strict load still works
    assert all(type(block) is FastBlock and type(block.attn) is FastAttention for block in encoder.blocks)
    assert isinstance(encoder.blocks[0], Block) and isinstance(encoder.blocks[0].attn, Attention)
    assert use_fast_attention(encoder) is encoder  # idempotent


def test_built_network_uses_fast_attention_in_every_block():
    network = build_sam_network(EncoderSettings("tiny", 128), "autosam", 1, 4)
    assert uses_fast_attention(network.encoder)
    assert len(network.encoder.blocks) == 2
    embedding = network.embed(torch.randn(3, 1, 64, 48))
    assert embedding.dtype == torch.float32 and embedding.shape == (3, 256, 8, 8)
