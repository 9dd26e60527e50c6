"""Faster forms of the heads' layers: the same parameters, keys and function.

``use_fast_layers(module)`` switches, in place, every segment_anything ``Attention`` (the two-way
transformer's) and ``LayerNorm2d``, and every 2x2 stride-2 ``ConvTranspose2d``, inside ``module`` to
the subclasses below. They add no state, so weights, state-dict keys and checkpoints are unchanged;
only how the same function is computed:

- ``SDPAAttention``: softmax(q k^T / sqrt(d)) v through ``scaled_dot_product_attention`` (a fused
  kernel forward and backward) instead of explicit matrices;
- ``FusedLayerNorm2d``: the channel-wise layer norm as one ``layer_norm`` kernel instead of the
  seven elementwise passes (mean, subtract, square, mean, add, sqrt, divide) of SAM's module,
  on the head's largest activation (64 channels at twice the embedding grid);
- ``MatmulConvTranspose2d``: a 2x2 stride-2 transposed convolution has no overlapping outputs, so it is
  one matrix product per pixel (channels in -> 4 x channels out, bias included) and a pixel shuffle,
  which on CPU beats the general transposed-convolution kernel forward and backward.

Equivalence (fp32, logits and gradients) is checked by tests/test_fast_head.py.
"""

from typing import TypeVar

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.transformer import Attention
from torch import nn


class SDPAAttention(Attention):
    """segment_anything's two-way-transformer Attention, computed with scaled_dot_product_attention."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v)))


class FusedLayerNorm2d(LayerNorm2d):
    """SAM's LayerNorm2d (normalise over channels at each pixel) as one layer_norm kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalised = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return normalised.permute(0, 3, 1, 2)


class MatmulConvTranspose2d(nn.ConvTranspose2d):
    """A 2x2, stride-2 transposed convolution as one matrix product and a pixel shuffle."""

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        batch, _, height, width = x.shape
        out = self.out_channels
        weight = self.weight.flatten(1).t()  # (out * 2 * 2, in): row (o, dy, dx)
        bias = self.bias.repeat_interleave(4) if self.bias is not None else None
        pixels = F.linear(x.permute(0, 2, 3, 1), weight, bias)  # (B, H, W, out * 4)
        pixels = pixels.view(batch, height, width, out, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return pixels.reshape(batch, out, 2 * height, 2 * width)


def _is_plain_2x2_upsampling(module: nn.Module) -> bool:
    return (
        type(module) is nn.ConvTranspose2d
        and module.kernel_size == (2, 2)
        and module.stride == (2, 2)
        and module.padding == (0, 0)
        and module.output_padding == (0, 0)
        and module.dilation == (1, 1)
        and module.groups == 1
    )


FAST_FORMS: dict[type, type[nn.Module]] = {Attention: SDPAAttention, LayerNorm2d: FusedLayerNorm2d}

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def use_fast_layers(module: ModuleT) -> ModuleT:
    """Switch every layer of ``module`` that has a fast form above to it (in place); returns ``module``."""
    for child in module.modules():
        fast = MatmulConvTranspose2d if _is_plain_2x2_upsampling(child) else FAST_FORMS.get(type(child))
        if fast is not None:
            child.__class__ = fast  # a subclass that adds no state: same parameters, buffers and keys
    return module
