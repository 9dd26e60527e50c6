"""The encoder types: each ViT's shape and official checkpoint file (no torch import, so the CLI starts fast)."""

from dataclasses import dataclass
from typing import Optional, Tuple

from nnunet_autosam.errors import InputError

EMBEDDING_DIM = 256  # SAM's image embedding channels (the encoder's neck output), fixed for all sizes
PATCH_SIZE = 16
WEIGHTS_ENV = "nnUNet_SAM_weights"


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder type: the ViT's shape and the official file that holds its weights."""
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: Tuple[int, ...]
    checkpoint_file: Optional[str]
    download_hint: str = ""


_SAM_DOWNLOAD = "https://dl.fbaipublicfiles.com/segment_anything/"
ENCODERS = {
    "vit_b": EncoderSpec(768, 12, 12, (2, 5, 8, 11), "sam_vit_b_01ec64.pth", _SAM_DOWNLOAD),
    "vit_l": EncoderSpec(1024, 24, 16, (5, 11, 17, 23), "sam_vit_l_0b3195.pth", _SAM_DOWNLOAD),
    "vit_h": EncoderSpec(1280, 32, 16, (7, 15, 23, 31), "sam_vit_h_4b8939.pth", _SAM_DOWNLOAD),
    "medsam_vit_b": EncoderSpec(768, 12, 12, (2, 5, 8, 11), "medsam_vit_b.pth",
                                "the MedSAM project (github.com/bowang-lab/MedSAM) at "),
    # Same module and key layout as SAM's, a fraction of the size: tests and CPU demos. Random
    # weights unless a checkpoint file is named; it shows the workflow, not SAM's quality.
    "tiny": EncoderSpec(64, 2, 2, (1,), None),
}


def encoder_spec(encoder_type: str) -> EncoderSpec:
    if encoder_type not in ENCODERS:
        raise InputError(f"unknown encoder type {encoder_type!r}: use one of {', '.join(ENCODERS)}")
    return ENCODERS[encoder_type]


def check_input_size(input_size: int) -> None:
    if input_size < 64 or input_size % PATCH_SIZE:
        raise InputError(f"encoder input size {input_size} is not a multiple of {PATCH_SIZE} of at least 64: "
                         f"use 1024 (SAM's own), 512 or 256")
