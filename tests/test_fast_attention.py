"""The fast encoder path computes segment_anything's own encoder function, with the same weights and keys."""

import copy

import pytest
import torch
from sam_files import random_sam
from segment_anything.modeling.image_encoder import Attention, Block

from nnunet_autosam.experiment_planning.settings import EncoderSettings
from nnunet_autosam.model.encoders.fast_attention import (
    FastAttention,
    FastBlock,
    use_fast_attention,
    uses_fast_attention,
)
from nnunet_autosam.model.encoders.sam_vit import build_image_encoder, resize_position_tables
from nnunet_autosam.model.network import build_sam_network

RELATIVE_TOLERANCE = 1e-4  # the fp32 bound stated in nnunet_autosam/model/encoders/fast_attention.py


def _loaded_encoder(encoder_type: str, input_size: int):
    """segment_anything's stock encoder at input_size with structured weights (pos tables resized as we load them).

    random_sam's weights are all N(0, 0.02^2): every attention logit is then near 0, attention near uniform,
    and a fast path that dropped the relative-position term would still match. Here the weights look trained
    where it matters: unit LayerNorm gains, qkv at 1/sqrt(dim) (attention logits of order 1), and rel_pos tables
    peaked at offset 0 with a channel profile of order 1, so that the relative-position term alone reshapes
    the attention (_assert_rel_pos_matters checks that it does).
    """
    state = {
        k[len("image_encoder.") :]: v
        for k, v in random_sam(encoder_type).state_dict().items()
        if k.startswith("image_encoder.")
    }
    generator = torch.Generator().manual_seed(1)
    for name, value in state.items():
        if name.endswith(("norm1.weight", "norm2.weight")):
            state[name] = torch.ones_like(value)
        elif name.endswith("attn.qkv.weight"):
            state[name] = torch.randn(value.shape, generator=generator) * value.shape[1] ** -0.5
        elif name.endswith(("rel_pos_h", "rel_pos_w")):
            offsets = torch.arange(value.shape[0]) - (value.shape[0] - 1) / 2
            peak = torch.exp(-((offsets / 3) ** 2))[:, None]  # nearby tokens get the largest term
            state[name] = peak * torch.randn(1, value.shape[1], generator=generator) * 2
    encoder = build_image_encoder(encoder_type, input_size)
    encoder.load_state_dict(resize_position_tables(state, encoder))
    return encoder.eval()


def _assert_close(reference: torch.Tensor, fast: torch.Tensor) -> None:
    assert fast.shape == reference.shape
    error = (fast - reference).abs().max().item()
    assert error <= RELATIVE_TOLERANCE * reference.abs().max().item(), error


def _without_rel_pos(encoder):
    plain = copy.deepcopy(encoder)
    with torch.no_grad():
        for block in plain.blocks:
            block.attn.rel_pos_h.zero_()
            block.attn.rel_pos_w.zero_()
    return plain


def _assert_rel_pos_matters(reference_output: torch.Tensor, output_without_rel_pos: torch.Tensor) -> None:
    """The relative-position term moves the output by far more than the tolerance: dropping it cannot pass."""
    change = (reference_output - output_without_rel_pos).abs().max().item()
    assert change > 100 * RELATIVE_TOLERANCE * reference_output.abs().max().item(), change


SHAPES = [
    ("vit_b", 256),  # vit_b's shape: 12 heads of 64, 16x16 tokens padded to 28x28 for the 14-token windows
    ("tiny", 512),  # global attention on 32x32 tokens (rel_pos interpolated at run time), windows padded 32 -> 42
]


@pytest.mark.slow
@pytest.mark.parametrize("encoder_type, input_size", SHAPES)
def test_fast_path_matches_segment_anything_forward(encoder_type, input_size):
    torch.manual_seed(0)
    reference = _loaded_encoder(encoder_type, input_size)
    fast = use_fast_attention(copy.deepcopy(reference))
    x = torch.randn(2, 3, input_size, input_size)
    with torch.no_grad():
        expected = reference(x)
        _assert_rel_pos_matters(expected, _without_rel_pos(reference)(x))
        _assert_close(expected, fast(x))


def _blocks_output_and_gradients(encoder, tokens: torch.Tensor):
    """The blocks' output for ``tokens`` and the gradients of a loss on it: input first, then every parameter's."""
    encoder.zero_grad()
    x = tokens.clone().requires_grad_(True)
    out = x
    for block in encoder.blocks:
        out = block(out)
    out.square().sum().backward()
    return out.detach(), [x.grad] + [p.grad for p in encoder.parameters() if p.grad is not None]


@pytest.mark.slow
@pytest.mark.parametrize(
    "encoder_type, input_size, grid",
    [
        ("vit_b", 256, (16, 16)),  # 12 blocks, windows padded 16 -> 28
        ("tiny", 512, (32, 32)),  # global attention on 32x32 tokens
        ("tiny", 256, (12, 20)),  # windows padded on both axes (14 x 28), global attention on a non-square grid
    ],
)
def test_fast_attention_gradients_agree(encoder_type, input_size, grid):
    torch.manual_seed(0)
    reference = _loaded_encoder(encoder_type, input_size)
    fast = use_fast_attention(copy.deepcopy(reference))
    tokens = torch.randn(1, *grid, reference.pos_embed.shape[-1])
    expected, expected_grads = _blocks_output_and_gradients(reference, tokens)
    output, grads = _blocks_output_and_gradients(fast, tokens)
    _assert_close(expected, output)
    rel_pos_grads = [p.grad for name, p in fast.named_parameters() if "rel_pos" in name]
    assert rel_pos_grads and all(g is not None and g.abs().max() > 0 for g in rel_pos_grads)
    assert len(grads) == len(expected_grads)
    for g_ref, g_fast in zip(expected_grads, grads):
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
