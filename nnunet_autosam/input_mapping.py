"""How nnU-Net's z-scored single-channel patches reach SAM's encoder.

SAM was trained on RGB photographs, 0-255, normalised with its pixel mean and std. nnU-Net hands
the network one z-scored channel per patch (per-case mean 0, std 1 for MRI). We show SAM what it
would see if the slice were saved as an 8-bit grey picture with a +-3 SD window:

1. resize the patch to the encoder's square input (bilinear; the head's logits are resized back),
2. clip z to [-3, 3] and map it linearly onto 0..255 (grey), repeated to R, G and B,
3. normalise each channel with SAM's own pixel mean and std.

This keeps SAM's input statistics (a mid-grey background lands near 0 after step 3) and keeps the
contrast nnU-Net's normalisation chose. The reference implementation feeds the raw grey image
without SAM's statistics; we do not, because the pretrained patch embedding expects them.
"""

import torch
import torch.nn.functional as F
from torch import nn

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
Z_WINDOW = 3.0
NAME = "zscore_window3sd_to_sam_rgb"  # part of an encoder's identity: a changed mapping changes the features


class ZScoreToSAMInput(nn.Module):
    """(B, 1, H, W) z-scored patches -> (B, 3, S, S) SAM-normalised encoder input."""

    def __init__(self, input_size: int):
        super().__init__()
        self.input_size = input_size
        self.register_buffer("pixel_mean", torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        grey = (x.clamp(-Z_WINDOW, Z_WINDOW) + Z_WINDOW) * (255.0 / (2 * Z_WINDOW))
        return (grey - self.pixel_mean) / self.pixel_std
