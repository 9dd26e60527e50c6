"""AutoSAM: SAM's mask decoder with the prompts taken out and one learned token per class.

SAM's decoder turns (image embedding, prompt tokens, output tokens) into masks. Here there are no
prompt tokens: each class owns an output token, and all class tokens go through the two-way
transformer together, so one pass yields every class (the reference code runs one pass per class;
batching the classes as extra tokens gives the same kind of output for a fraction of the cost).
The transformer, the upscaling and the hypernetwork MLPs start from the checkpoint's decoder; the
class tokens are learned from scratch.
"""

import torch
from segment_anything.modeling import TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from nnunet_autosam.model.encoders.base import EMBEDDING_DIM, state_part
from nnunet_autosam.model.heads.base import SegmentationHead

SAM_MASK_TOKENS = 4  # SAM's decoder has one single-mask and three multimask output tokens


def sam_upscaling(dim: int = EMBEDDING_DIM) -> nn.Sequential:
    """SAM's output upscaling: 256 -> 64 -> 32 channels, 4x the token grid (keys as in SAM's decoder)."""
    return nn.Sequential(
        nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
        LayerNorm2d(dim // 4),
        nn.GELU(),
        nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
        nn.GELU(),
    )


class AutoSAMHead(SegmentationHead):
    # fp32 on the CPU. Under autocast as it comes, each linear layer copies the fp32 residual stream of the 4096
    # image tokens to bf16, and the step ran at 0.9x fp32's speed on an AMX Xeon. With the token streams kept in
    # bf16 throughout it ran at 1.47x on an AMD EPYC and 0.91x on a Xeon without AMX, and in 3 seeded pairs at 1
    # labelled ACDC patient it scored 1.0 to 10.2 points of test Dice below fp32 (docs/cpu_precision.md). Its
    # step takes well under a second, so fp32 costs little even where bf16 was faster.
    cpu_bf16 = False

    def __init__(self, num_classes: int, grid_size: int, dim: int = EMBEDDING_DIM):
        super().__init__(num_classes, grid_size, dim)
        self.transformer = TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=2048, num_heads=8)
        self.class_tokens = nn.Embedding(num_classes, dim)
        # SAM adds this learned "no mask prompt" embedding to the image embedding when no mask is given.
        self.no_mask_embed = nn.Embedding(1, dim)
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.output_upscaling = sam_upscaling(dim)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(num_classes))

    def load_pretrained(self, sam_state: dict) -> None:
        """Start from a SAM checkpoint's decoder: class i's hypernetwork MLP from SAM's mask token i mod 4.

        A file without a mask decoder (an encoder-only file) leaves the decoder as initialised.
        """
        if not any(key.startswith("mask_decoder.") for key in sam_state):
            return
        self.transformer.load_state_dict(state_part(sam_state, "mask_decoder.transformer."))
        self.output_upscaling.load_state_dict(state_part(sam_state, "mask_decoder.output_upscaling."))
        self.no_mask_embed.load_state_dict(state_part(sam_state, "prompt_encoder.no_mask_embed."))
        self.pe_layer.load_state_dict(state_part(sam_state, "prompt_encoder.pe_layer."))
        for i, mlp in enumerate(self.output_hypernetworks_mlps):
            mlp.load_state_dict(state_part(sam_state, f"mask_decoder.output_hypernetworks_mlps.{i % SAM_MASK_TOKENS}."))

    @staticmethod
    def token_layout(grid: torch.Tensor) -> torch.Tensor:
        """Channels-last memory: the transformer flattens (B, C, H, W) to (B, H*W, C) image tokens, which is
        then a view of contiguous memory, not a strided one that every linear layer on them would copy.
        The values are the same; only the memory order differs."""
        return grid.contiguous(memory_format=torch.channels_last)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        b, c, h, w = embedding.shape
        image_pe = self.token_layout(self.pe_layer((h, w)).unsqueeze(0)).expand(b, -1, -1, -1).to(embedding.dtype)
        src = self.token_layout(embedding + self.no_mask_embed.weight.view(1, c, 1, 1))
        tokens = self.class_tokens.weight.unsqueeze(0).expand(b, -1, -1).to(embedding.dtype)
        class_out, src = self.transformer(src, image_pe, tokens)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(class_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        return (hyper @ upscaled.flatten(2)).view(b, -1, *upscaled.shape[-2:])
