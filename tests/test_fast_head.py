"""The heads' fast layers compute segment_anything's own function: same keys, logits and gradients in fp32."""

import copy

import pytest
import torch
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.transformer import Attention

from nnunet_autosam.model.heads.autosam import AutoSAMHead
from nnunet_autosam.model.heads.cnn import CNNHead
from nnunet_autosam.model.heads.fast_layers import (
    FusedLayerNorm2d,
    MatmulConvTranspose2d,
    SDPAAttention,
    use_fast_layers,
)
from nnunet_autosam.model.heads.linear import LinearHead
from nnunet_autosam.model.network import build_head

TOLERANCE = 1e-5  # relative to the largest reference magnitude; fp32 rounding of a different summation order


def _close(reference: torch.Tensor, fast: torch.Tensor, scale=None) -> bool:
    scale = reference.abs().max().item() if scale is None else scale
    return (fast - reference).abs().max().item() <= TOLERANCE * scale


HEADS = {
    "autosam": lambda: AutoSAMHead(4, 16),
    "linear": lambda: LinearHead(3, 16),
    "cnn": lambda: CNNHead(2, 16, width=128),
}


@pytest.mark.parametrize("make_head", HEADS.values(), ids=HEADS.keys())
def test_fast_head_matches_the_reference_logits_and_gradients(make_head):
    torch.manual_seed(0)
    reference = make_head()
    for parameter in reference.parameters():  # non-trivial LayerNorm weights and biases too
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    fast = use_fast_layers(copy.deepcopy(reference))
    assert fast.state_dict().keys() == reference.state_dict().keys()
    assert not any(type(m) in (Attention, LayerNorm2d, torch.nn.ConvTranspose2d) for m in fast.modules())

    embedding = torch.randn(2, 256, 16, 16)
    reference_logits, fast_logits = reference(embedding), fast(embedding)
    assert fast_logits.shape == reference_logits.shape and _close(reference_logits, fast_logits)
    weights = torch.randn_like(reference_logits)
    (reference_logits * weights).sum().backward()
    (fast_logits * weights).sum().backward()
    # Relative to the largest gradient: some are zero in exact arithmetic (a key bias cannot change a softmax)
    scale = max(p.grad.abs().max().item() for p in reference.parameters())
    for (name, r), (_, f) in zip(reference.named_parameters(), fast.named_parameters()):
        assert _close(r.grad, f.grad, scale), name


def test_channels_last_image_tokens_change_no_value():
    torch.manual_seed(0)
    head = AutoSAMHead(4, 16)
    upstream_layout = copy.deepcopy(head)
    upstream_layout.token_layout = lambda grid: grid  # segment_anything's layout, as the decoder gives it
    embedding = torch.randn(2, 256, 16, 16)
    assert torch.allclose(head(embedding), upstream_layout(embedding), rtol=0, atol=1e-6)


def test_built_heads_use_the_fast_layers():
    head = build_head("autosam", 4, 16)
    assert any(isinstance(m, SDPAAttention) for m in head.modules())
    assert any(isinstance(m, FusedLayerNorm2d) for m in head.modules())
    assert any(isinstance(m, MatmulConvTranspose2d) for m in build_head("cnn", 4, 16).modules())
