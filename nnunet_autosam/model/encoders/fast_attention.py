"""A faster forward for SAM's ViT image encoder, with the same weights and the same math.

``use_fast_attention(encoder)`` swaps, inside one ``ImageEncoderViT`` instance, every block for a
``FastBlock`` and every block's ``attn`` for a ``FastAttention``. The new modules are subclasses of
segment_anything's own ``Block`` and ``Attention``, hold the very same parameter tensors, and keep
every state-dict key, so checkpoints load as before and nothing in segment_anything is patched.

What changes is how the same function is computed:

- ``FastAttention`` runs ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels on
  CUDA and CPU) instead of an explicit ``softmax(q k^T) v``. SAM's decomposed relative position
  term (``get_rel_pos`` of segment_anything itself, multiplied with the *unscaled* q as SAM does) is
  passed as the additive ``attn_mask``, built directly in SDPA's (B, heads, HW, HW) layout; the
  softmax scale is head_dim ** -0.5 as in SAM.
- ``FastBlock`` (window-attention blocks only) skips the padding work. SAM pads the normalised
  tokens with zeros up to a multiple of the 14-token window and then runs qkv and proj on every
  padded token: at input 256 (16x16 tokens -> 28x28) that is 3x the real tokens. The qkv of a zero
  token is exactly the qkv bias, so the fast block runs qkv on the real tokens, pads the result
  with that bias (the padded tokens still take part in attention as keys and values, exactly as in
  SAM), attends per window, crops, and runs proj on the real tokens only.

Equivalence (fp32, CPU, checked by tests/test_fast_attention.py): on vit_b-shaped weights at
input 256 and on the tiny encoder at 512 (global attention on 32x32 tokens, rel_pos tables
interpolated at run time; windows padded 32 -> 42), random but with rel_pos tables strong enough
to reshape the attention, the 256-channel embedding differs from segment_anything's own forward by
at most 1e-4 relative to its largest magnitude (``max|fast - sam| <= 1e-4 * max|sam|``; measured
~1.5e-6 and ~3e-7), and so do the gradients (the fine-tuned encoder trains through the same modules).

Channels-last memory format is not used: a ViT has two convolutions (patch embedding, neck) and
their share of the encoder's time is small; benchmarks/speed.py measures it (``--channels-last``).
"""

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import (
    Attention,
    Block,
    ImageEncoderViT,
    get_rel_pos,
    window_partition,
    window_unpartition,
)
from torch import nn


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple
) -> torch.Tensor:
    """SAM's decomposed relative position term as an additive attention bias.

    q: (B, heads, H*W, head_dim), unscaled; returns (B, heads, H*W, H*W) in q's dtype, equal to what
    segment_anything's ``add_decomposed_rel_pos`` adds to the attention logits.
    """
    h, w = size
    batch, heads, _, dim = q.shape
    rh = get_rel_pos(h, h, rel_pos_h).to(q.dtype)  # (h, kh, dim)
    rw = get_rel_pos(w, w, rel_pos_w).to(q.dtype)  # (w, kw, dim)
    r_q = q.reshape(batch, heads, h, w, dim)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(batch, heads, h * w, h * w)


class FastAttention(Attention):
    """segment_anything's Attention (same parameters and keys), computed with scaled_dot_product_attention."""

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3*dim) projected q, k, v -> (B, H, W, dim) attention output before ``proj``."""
        batch, h, w, _ = qkv.shape
        # (3, B, heads, H*W, head_dim), the layout SAM uses before folding heads into the batch
        q, k, v = qkv.reshape(batch, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w)) if self.use_rel_pos else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return out.permute(0, 2, 1, 3).reshape(batch, h, w, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attend(self.qkv(x)))


class FastBlock(Block):
    """segment_anything's Block (same submodules and keys); window attention without work on padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window_size == 0 or not isinstance(self.attn, FastAttention):
            return super().forward(x)
        shortcut = x
        batch, h, w, _ = x.shape
        qkv = self.attn.qkv(self.norm1(x))
        pad_h, pad_w = (-h) % self.window_size, (-w) % self.window_size
        if pad_h or pad_w:
            # SAM pads the normalised tokens with zeros; qkv(0) is exactly the qkv bias.
            fill = self.attn.qkv.bias if self.attn.qkv.bias is not None else qkv.new_zeros(qkv.shape[-1])
            fill = fill.to(qkv.dtype)
            if pad_w:
                qkv = torch.cat([qkv, fill.expand(batch, h, pad_w, -1)], dim=2)
            if pad_h:
                qkv = torch.cat([qkv, fill.expand(batch, pad_h, w + pad_w, -1)], dim=1)
        windows, padded = window_partition(qkv, self.window_size)  # already padded: a reshape
        out = window_unpartition(self.attn.attend(windows), self.window_size, padded, (h, w))
        x = shortcut + self.attn.proj(out)
        return x + self.mlp(self.norm2(x))


def _fast_attention_from(attn: Attention) -> FastAttention:
    fast = FastAttention.__new__(FastAttention)
    nn.Module.__init__(fast)
    fast.num_heads, fast.scale, fast.use_rel_pos = attn.num_heads, attn.scale, attn.use_rel_pos
    for name, child in attn.named_children():
        fast.add_module(name, child)  # the same Linear modules: the same parameter tensors
    for name, parameter in attn.named_parameters(recurse=False):
        fast.register_parameter(name, parameter)
    fast.train(attn.training)
    return fast


def _fast_block_from(block: Block) -> FastBlock:
    fast = FastBlock.__new__(FastBlock)
    nn.Module.__init__(fast)
    fast.window_size = block.window_size
    for name, child in block.named_children():
        fast.add_module(name, _fast_attention_from(child) if name == "attn" else child)
    fast.train(block.training)
    return fast


def use_fast_attention(encoder: ImageEncoderViT) -> ImageEncoderViT:
    """Give ``encoder`` (in place; also returned) the fast blocks and attention, keeping every weight and key."""
    for index, block in enumerate(encoder.blocks):
        if type(block) is Block and type(block.attn) is Attention:
            encoder.blocks[index] = _fast_block_from(block)
        elif not isinstance(block, FastBlock):
            raise TypeError(f"block {index} is a {type(block).__name__}, not segment_anything's Block")
    return encoder


def uses_fast_attention(encoder: nn.Module) -> bool:
    blocks = getattr(encoder, "blocks", [])
    return len(blocks) > 0 and all(isinstance(b, FastBlock) and isinstance(b.attn, FastAttention) for b in blocks)
