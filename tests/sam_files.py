"""SAM checkpoint files written on the fly, in the official format (a plain state dict of a whole Sam model)."""

from pathlib import Path

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from nnunet_autosam.model.encoders.sam_vit import build_image_encoder


def random_sam(encoder_type: str) -> Sam:
    """A whole SAM model as segment_anything's build_sam.py assembles it, with random (non-zero) weights."""
    sam = Sam(
        image_encoder=build_image_encoder(encoder_type, 1024),
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in sam.parameters():  # SAM initialises pos_embed and rel_pos to zero: fill them
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return sam


def write_sam_checkpoint(path: Path, encoder_type: str) -> Path:
    torch.save(random_sam(encoder_type).state_dict(), path)
    return path
