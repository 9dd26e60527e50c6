"""The network nnU-Net trains: input mapping -> SAM image encoder -> prompt-free head -> logits at patch size.

A frozen encoder loaded from a SAM file is left out of the network's state dict: a fold's
checkpoint then holds the head and the encoder's identity (type, input size, input mapping, file
hash), not another copy of weights that may be 2.5 GB. Loading such a checkpoint takes the
encoder weights from the network as built (from the SAM file) and refuses a file whose hash
differs from the one the head was trained on. A trainable encoder, or one with no file (``tiny``),
is stored like any other weights.

The encoder runs through nnunet_autosam.fast_attention (scaled_dot_product_attention with SAM's
relative-position term as the additive mask, no qkv/proj work on window padding): the same weights,
keys and math as segment_anything's forward, within fp32 rounding. On CUDA the encoder runs under
bf16 autocast (its output is cast back to fp32 for the head); on CPU it stays fp32. The whole batch
goes through the encoder in one call.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_autosam import input_mapping
from nnunet_autosam.encoder import build_image_encoder, file_sha256, load_encoder_weights, load_sam_state_dict, resolve_checkpoint
from nnunet_autosam.encoder_types import EMBEDDING_DIM, PATCH_SIZE
from nnunet_autosam.errors import InputError
from nnunet_autosam.fast_attention import encoder_autocast_dtype, use_fast_attention
from nnunet_autosam.heads.autosam import AutoSAMHead
from nnunet_autosam.heads.cnn import CNNHead
from nnunet_autosam.heads.linear import LinearHead

HEADS = ("autosam", "cnn", "linear")


@dataclass(frozen=True)
class EncoderSettings:
    """What the plans say about the encoder (configuration key ``sam_encoder``)."""
    encoder_type: str = "vit_b"
    input_size: int = 1024
    checkpoint: Optional[str] = None  # a file name inside $nnUNet_SAM_weights or an absolute path

    @classmethod
    def from_configuration(cls, configuration: dict) -> "EncoderSettings":
        """Settings from a plans configuration; plain nnUNetPlans (no ``sam_encoder``) means vit_b at 1024."""
        entry = dict(configuration.get("sam_encoder") or {})
        return cls(encoder_type=entry.get("type", cls.encoder_type),
                   input_size=int(entry.get("input_size", cls.input_size)),
                   checkpoint=entry.get("checkpoint"))


def build_head(head: str, num_classes: int, grid_size: int) -> nn.Module:
    if head == "autosam":
        return AutoSAMHead(num_classes, grid_size)
    if head == "cnn":
        return CNNHead(num_classes)
    if head == "linear":
        return LinearHead(num_classes)
    raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")


class SAMSegmentationNetwork(nn.Module):
    """(B, 1, H, W) z-scored patch -> (B, C, H, W) logits, every class in one pass, no softmax."""

    def __init__(self, encoder: nn.Module, head: nn.Module, input_size: int, identity: dict,
                 train_encoder: bool, store_encoder: bool):
        super().__init__()
        self.input_mapping = input_mapping.ZScoreToSAMInput(input_size)
        self.encoder = encoder
        self.head = head
        self.identity = identity
        self.train_encoder = train_encoder
        self.store_encoder = store_encoder
        if not train_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        self.register_state_dict_post_hook(_drop_unstored_encoder)
        self.register_load_state_dict_pre_hook(_restore_unstored_encoder)

    def train(self, mode: bool = True) -> "SAMSegmentationNetwork":
        super().train(mode)
        if not self.train_encoder:
            self.encoder.eval()  # a frozen encoder always runs in inference mode
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """SAM's image embedding (B, 256, S/16, S/16) in fp32; no autograd graph through a frozen encoder.

        On CUDA the encoder runs under bf16 autocast (fp16 where the GPU lacks bf16), overriding
        nnU-Net's fp16 autocast for the ViT only; on CPU it runs in fp32.
        """
        dtype = encoder_autocast_dtype(x.device)
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            mapped = self.input_mapping(x.float())
            with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
                embedding = self.encoder(mapped)
        return embedding.float()

    def segment(self, embedding: torch.Tensor, size) -> torch.Tensor:
        """The head's logits (at a quarter of the input size) resized to the patch size ``size``."""
        return F.interpolate(self.head(embedding), size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segment(self.embed(x), x.shape[-2:])

    def get_extra_state(self) -> dict:
        return dict(self.identity, encoder_stored=self.store_encoder)

    def set_extra_state(self, state: dict) -> None:
        trained = {k: v for k, v in state.items() if k != "encoder_stored"}
        for key in ("encoder_type", "input_size", "input_mapping"):
            if trained.get(key) != self.identity.get(key):
                raise InputError(f"this checkpoint was trained with {key} {trained.get(key)!r} but the plans build "
                                 f"{self.identity.get(key)!r}: predict with the plans.json saved beside the checkpoint")
        if not state.get("encoder_stored") and trained.get("checkpoint_sha256") != self.identity["checkpoint_sha256"]:
            raise InputError(f"SAM checkpoint {self.identity['checkpoint_file']} (sha256 "
                             f"{str(self.identity['checkpoint_sha256'])[:12]}) is not the file this head was trained "
                             f"on (sha256 {str(trained.get('checkpoint_sha256'))[:12]}, "
                             f"{trained.get('checkpoint_file')}): restore that file in $nnUNet_SAM_weights")


def _drop_unstored_encoder(module: SAMSegmentationNetwork, state_dict: dict, prefix: str, local_metadata) -> None:
    if not module.store_encoder:
        for key in [k for k in state_dict if k.startswith(prefix + "encoder.")]:
            del state_dict[key]


def _restore_unstored_encoder(module: SAMSegmentationNetwork, state_dict: dict, prefix: str, local_metadata,
                              strict, missing_keys, unexpected_keys, error_msgs) -> None:
    """A lean checkpoint has no encoder.* keys: keep the weights the network was built with."""
    if not any(k.startswith(prefix + "encoder.") for k in state_dict):
        for key, value in module.encoder.state_dict().items():
            state_dict[prefix + "encoder." + key] = value


def build_sam_network(settings: EncoderSettings, head: str, num_input_channels: int, num_classes: int,
                      train_encoder: bool = False) -> SAMSegmentationNetwork:
    """Build the encoder (weights from its SAM file where there is one), the head, and join them."""
    if num_input_channels != 1:
        raise InputError(f"SAM encoders take one image channel but this dataset has {num_input_channels}: "
                         f"train on a single-channel dataset (one modality)")
    encoder = use_fast_attention(build_image_encoder(settings.encoder_type, settings.input_size))
    grid_size = settings.input_size // PATCH_SIZE
    head_module = build_head(head, num_classes, grid_size)
    path = resolve_checkpoint(settings.encoder_type, settings.checkpoint)
    if path is not None:
        sam_state = load_sam_state_dict(path)
        load_encoder_weights(encoder, settings.encoder_type, sam_state, path)
        if isinstance(head_module, AutoSAMHead) and any(k.startswith("mask_decoder.") for k in sam_state):
            head_module.load_sam_decoder(sam_state)
    identity = {
        "encoder_type": settings.encoder_type,
        "input_size": settings.input_size,
        "input_mapping": input_mapping.NAME,
        "embedding_dim": EMBEDDING_DIM,
        "checkpoint_file": path.name if path else None,
        "checkpoint_sha256": file_sha256(path) if path else None,
    }
    return SAMSegmentationNetwork(encoder, head_module, settings.input_size, identity,
                                  train_encoder=train_encoder, store_encoder=train_encoder or path is None)

