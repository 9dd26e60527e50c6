"""CNN decoder on the 256-channel embedding, in the reference's layout.

A 1x1 convolution widens the embedding to 1024 channels and a 3x3 convolution mixes neighbours;
then two stages each halve the channels with a 3x3 convolution and double the resolution with a
transposed convolution (4x in all, like SAM's decoder), and a 1x1 convolution gives the classes.
No skip connections: the encoder offers only its last feature map. We add GroupNorm after each
convolution, which the reference lacks, because a 20M-parameter decoder without normalisation
trains erratically at the small batches few-label training uses.
"""

import torch
from torch import nn

from nnunet_autosam.model.encoders.base import EMBEDDING_DIM
from nnunet_autosam.model.heads.base import SegmentationHead


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.GroupNorm(32, out_channels),
        nn.GELU(),
    )


def upsampling_stage(in_channels: int) -> nn.Sequential:
    """Halve the channels (3x3 convolution), then double the resolution (2x2 transposed convolution)."""
    out_channels = in_channels // 2
    return nn.Sequential(
        conv_norm_act(in_channels, out_channels, 3),
        nn.ConvTranspose2d(out_channels, out_channels, kernel_size=2, stride=2),
        nn.GroupNorm(32, out_channels),
        nn.GELU(),
    )


class CNNHead(SegmentationHead):
    def __init__(self, num_classes: int, grid_size: int, dim: int = EMBEDDING_DIM, width: int = 1024):
        super().__init__(num_classes, grid_size, dim)
        self.stem = nn.Sequential(conv_norm_act(dim, width, 1), conv_norm_act(width, width, 3))
        self.stages = nn.Sequential(upsampling_stage(width), upsampling_stage(width // 2))
        self.classifier = nn.Conv2d(width // 4, num_classes, kernel_size=1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.stages(self.stem(embedding)))
