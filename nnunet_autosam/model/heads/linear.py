"""Linear probe: SAM-style upscaling (two transposed convolutions) and a 1x1 convolution to classes.

About 75k parameters: it measures how much the frozen embedding alone carries. The reference
code applies a ReLU to the logits, which clips every negative logit; we leave the logits free.
"""

import torch
from torch import nn

from nnunet_autosam.model.encoders.base import EMBEDDING_DIM
from nnunet_autosam.model.heads.autosam import sam_upscaling
from nnunet_autosam.model.heads.base import SegmentationHead


class LinearHead(SegmentationHead):
    def __init__(self, num_classes: int, grid_size: int, dim: int = EMBEDDING_DIM):
        super().__init__(num_classes, grid_size, dim)
        self.upscaling = sam_upscaling(dim)
        self.classifier = nn.Conv2d(dim // 8, num_classes, kernel_size=1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.upscaling(embedding))
