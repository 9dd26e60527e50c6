"""How a case's image channels reach a SAM encoder that takes one RGB picture: the plans' ``sam_encoder.channels``.

nnU-Net hands the network every modality of a case as a channel (BraTS: FLAIR, T1c, ...; a 2.5D dataset of
``nnunet-autosam neighbours``: the slice below, the slice, the slice above). Two strategies:

- ``stack``: up to three channels as the encoder's R, G and B, one encoder pass per slice. Each channel goes
  through the family's own input mapping (resize, clip, scale) on its own, and encoder input channel k is
  taken from the mapped picture of image channel k, so SAM's per-colour pixel statistics still apply. One
  channel is grey repeated to R, G, B, as SAM sees a grey image; two fill R and G, and B is their mean.
- ``separate``: each channel through the encoder on its own as a grey picture (C passes per slice, every one
  cacheable); the C embeddings, concatenated, are fused by a learned 1x1 convolution trained with the head.
  It starts as their mean, so a pretrained decoder (AutoSAM) first sees an embedding of SAM's kind.

The strategy and the channel count are part of the encoder identity: caches, prediction memos and lean
checkpoints of one never serve another.
"""

import torch
from torch import nn

from nnunet_autosam.model.encoders.base import EMBEDDING_DIM, InputMapping
from nnunet_autosam.utilities.errors import InputError

STACK, SEPARATE = "stack", "separate"
STRATEGIES = (STACK, SEPARATE)
# The default for several channels, chosen on the BraTS sample's validation case (README, "Several channels").
DEFAULT_MULTI_CHANNEL = SEPARATE
MAX_STACKED = 3


def resolve_strategy(planned: str | None, num_channels: int, planned_channels: int | None = None) -> str:
    """The strategy for ``num_channels`` image channels: the plans' choice, checked, else the default."""
    if planned_channels is not None and planned_channels != num_channels:
        raise InputError(
            f"these plans were written for {planned_channels} image channel(s) but the dataset has {num_channels}: "
            f"write plans for this dataset (nnunet-autosam plans DATASET)"
        )
    strategy = planned or (STACK if num_channels == 1 else DEFAULT_MULTI_CHANNEL)
    if strategy not in STRATEGIES:
        raise InputError(
            f"sam_encoder.channels {strategy!r} is not a channel strategy: use one of {', '.join(STRATEGIES)}"
        )
    if strategy == STACK and num_channels > MAX_STACKED:
        raise InputError(
            f"channel strategy stack feeds at most {MAX_STACKED} channels to the encoder's R, G, B but the dataset "
            f"has {num_channels}: use nnunet-autosam plans --channels separate"
        )
    return strategy


def encoder_passes(strategy: str, num_channels: int) -> int:
    """Encoder passes per slice; the embedding the network caches has 256 channels per pass."""
    return num_channels if strategy == SEPARATE else 1


class StackedChannels(nn.Module):
    """(B, C <= 3, H, W) z-scored patches -> (B, 3, S, S): encoder input channel k from image channel k."""

    mix: torch.Tensor  # (3, C) weights of each image channel in each encoder input channel

    def __init__(self, mapping: InputMapping, num_channels: int):
        super().__init__()
        self.mapping = mapping
        mix = torch.eye(MAX_STACKED)[:, :num_channels]
        if num_channels == 2:
            mix[2] = 0.5
        self.register_buffer("mix", mix, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        if channels == 1:
            return self.mapping(x)
        mapped = self.mapping(x.reshape(batch * channels, 1, *x.shape[-2:]))
        mapped = mapped.reshape(batch, channels, *mapped.shape[1:])
        return torch.einsum("kc,bckhw->bkhw", self.mix, mapped)


class SeparateChannels(nn.Module):
    """(B, C, H, W) z-scored patches -> (B * C, 3, S, S): each channel its own grey picture, batch-major."""

    def __init__(self, mapping: InputMapping):
        super().__init__()
        self.mapping = mapping

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        return self.mapping(x.reshape(batch * channels, 1, *x.shape[-2:]))


class EmbeddingFusion(nn.Module):
    """(B, C * 256, G, G) per-channel embeddings -> (B, 256, G, G), a 1x1 convolution started as their mean."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(num_channels * EMBEDDING_DIM, EMBEDDING_DIM, kernel_size=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(EMBEDDING_DIM).repeat(1, num_channels)[:, :, None, None] / num_channels)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.conv(embedding)


def build_channel_input(strategy: str, num_channels: int, mapping: InputMapping) -> tuple[nn.Module, nn.Module]:
    """(the module from image channels to encoder input, the module from encoder output to the head's input)."""
    if strategy == SEPARATE:
        return SeparateChannels(mapping), EmbeddingFusion(num_channels)
    return StackedChannels(mapping, num_channels), nn.Identity()
