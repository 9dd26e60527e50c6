"""The network nnU-Net trains: channels -> SAM-family image encoder -> (fusion) -> prompt-free head -> logits.

A frozen encoder loaded from a SAM file is left out of the network's state dict: a fold's
checkpoint then holds the head and the encoder's identity (type, input size, input mapping, channel
strategy, file hash), not another copy of weights that may be 2.5 GB. Loading such a checkpoint takes the
encoder weights from the network as built (from the weights file) and refuses a file whose hash
differs from the one the head was trained on. A trainable encoder, or one with no file (``tiny``),
is stored like any other weights.

The encoder's family (nnunet_autosam.model.encoders) builds it, maps the input, and says how big its
embedding grid is; the plans' channel strategy (nnunet_autosam.model.channel_input) says how the image
channels become encoder passes and how their embeddings are fused before the head.

The encoder runs under bf16 autocast on CUDA, and on a CPU where CPU bf16 is on when it is trained (a
frozen one there stays fp32 unless asked; see nnunet_autosam/utilities/precision.py); its output is
cast back to fp32 for the head. The head runs under bf16 autocast on such a CPU where its class allows
(``cpu_bf16``: the linear and CNN heads, not AutoSAM's); its logits come back in fp32. The whole batch goes
through the encoder in one call.
With ``AUTOSAM_EMBEDDING_MEMO`` set, a frozen encoder's eval-mode embeddings are remembered on disk
across predictions (nnunet_autosam.model.embedding_memo).
"""

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_autosam.experiment_planning.settings import EncoderSettings
from nnunet_autosam.model import encoders
from nnunet_autosam.model.channel_input import build_channel_input, encoder_passes, resolve_strategy
from nnunet_autosam.model.embedding_memo import EmbeddingMemo
from nnunet_autosam.model.encoders.base import EMBEDDING_DIM, file_sha256
from nnunet_autosam.model.heads import head_spec
from nnunet_autosam.model.heads.base import SegmentationHead
from nnunet_autosam.model.heads.fast_layers import use_fast_layers
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.precision import encoder_autocast, head_autocast


def build_head(head: str, num_classes: int, grid_size: int) -> SegmentationHead:
    """The registered head ``head``, its layers in their faster forms (heads/fast_layers.py: same keys and math)."""
    return use_fast_layers(head_spec(head).head_class(num_classes, grid_size))


class SAMSegmentationNetwork(nn.Module):
    """(B, C, H, W) z-scored patch -> (B, K, H, W) logits, every class in one pass, no softmax."""

    def __init__(
        self,
        input_mapping: nn.Module,
        encoder: nn.Module,
        fusion: nn.Module,
        head: nn.Module,
        identity: dict,
        train_encoder: bool,
        store_encoder: bool,
        embedding_memo: EmbeddingMemo | None = None,
    ):
        super().__init__()
        self.input_mapping = input_mapping
        self.encoder = encoder
        self.fusion = fusion
        self.head = head
        self.identity = identity
        self.train_encoder = train_encoder
        self.store_encoder = store_encoder
        self.embedding_memo = embedding_memo
        if not train_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        self.register_state_dict_post_hook(_drop_unstored_encoder)
        self.register_load_state_dict_pre_hook(_restore_unstored_encoder)
        # Modules that cache values derived from their weights in eval mode (TinyViT's attention biases)
        # recompute them when the mode is set again, so set it again after every load.
        self.register_load_state_dict_post_hook(_reset_mode)

    def train(self, mode: bool = True) -> "SAMSegmentationNetwork":
        super().train(mode)
        if not self.train_encoder:
            self.encoder.eval()  # a frozen encoder always runs in inference mode
        return self

    def head_parameters(self) -> list:
        """What trains with the head: the head and the channel fusion (empty for stacked channels)."""
        return [p for p in [*self.fusion.parameters(), *self.head.parameters()] if p.requires_grad]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The image embedding (B, 256 x passes, G, G) in fp32; no autograd graph through a frozen encoder."""
        if self.embedding_memo is not None and not self.training:
            return self.embedding_memo.embed(x, self.encode)
        return self.encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Run the encoder under autocast to ``precision.encoder_dtype``: on CUDA bf16 (fp16 where the GPU
        lacks bf16), overriding nnU-Net's fp16 autocast for the ViT only; on a CPU with bf16 on, bf16 for an
        encoder being trained and fp32 for a frozen one (unless $AUTOSAM_CPU_BF16_ENCODER=1).
        """
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            mapped = self.input_mapping(x.float())
            with encoder_autocast(x.device, trained=self.train_encoder):
                embedding = self.encoder(mapped)
        return embedding.float().reshape(x.shape[0], -1, *embedding.shape[-2:])

    def segment(self, embedding: torch.Tensor, size) -> torch.Tensor:
        """The head's logits (at a quarter of the input size) resized to the patch size ``size``, in fp32."""
        with head_autocast(embedding.device, self.head):
            logits = self.head(self.fusion(embedding))
        return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segment(self.embed(x), x.shape[-2:])

    def get_extra_state(self) -> dict:
        return dict(self.identity, encoder_stored=self.store_encoder)

    def set_extra_state(self, state: dict) -> None:
        trained = {k: v for k, v in state.items() if k != "encoder_stored"}
        trained.setdefault("channels", "stack:1")  # heads saved before channel strategies took one channel
        for key in ("encoder_type", "input_size", "input_mapping", "channels"):
            if trained.get(key) != self.identity.get(key):
                raise InputError(
                    f"this checkpoint was trained with {key} {trained.get(key)!r} but the plans build "
                    f"{self.identity.get(key)!r}: predict with the plans.json saved beside the checkpoint"
                )
        if not state.get("encoder_stored") and trained.get("checkpoint_sha256") != self.identity["checkpoint_sha256"]:
            raise InputError(
                f"SAM checkpoint {self.identity['checkpoint_file']} (sha256 "
                f"{str(self.identity['checkpoint_sha256'])[:12]}) is not the file this head was trained "
                f"on (sha256 {str(trained.get('checkpoint_sha256'))[:12]}, "
                f"{trained.get('checkpoint_file')}): restore that file (in $nnUNet_SAM_weights, or "
                f"name it with nnunet-autosam plans --checkpoint)"
            )


def _reset_mode(module: SAMSegmentationNetwork, incompatible_keys) -> None:
    module.train(module.training)


def _drop_unstored_encoder(module: SAMSegmentationNetwork, state_dict: dict, prefix: str, local_metadata) -> None:
    if not module.store_encoder:
        for key in [k for k in state_dict if k.startswith(prefix + "encoder.")]:
            del state_dict[key]


def _restore_unstored_encoder(
    module: SAMSegmentationNetwork,
    state_dict: dict,
    prefix: str,
    local_metadata,
    strict,
    missing_keys,
    unexpected_keys,
    error_msgs,
) -> None:
    """A lean checkpoint has no encoder.* keys: keep the weights the network was built with."""
    if not any(k.startswith(prefix + "encoder.") for k in state_dict):
        for key, value in module.encoder.state_dict().items():
            state_dict[prefix + "encoder." + key] = value


def build_sam_network(
    settings: EncoderSettings, head: str, num_input_channels: int, num_classes: int, train_encoder: bool = False
) -> SAMSegmentationNetwork:
    """Build the encoder (weights from its file where there is one), the head, and join them."""
    strategy = resolve_strategy(settings.channels, num_input_channels, settings.num_channels)
    encoder_type, input_size = settings.encoder_type, settings.input_size
    family = encoders.family(encoder_type)
    family.check_input_size(encoder_type, input_size)
    # The head first: its random start draws from the global generator, which the (seeded) encoder build leaves alone.
    head_module = build_head(head, num_classes, family.embedding_grid(encoder_type, input_size))
    built = encoders.build_encoder(encoder_type, input_size, settings.checkpoint, frozen=not train_encoder)
    head_module.load_pretrained(built.sam_state)
    encoder, path = built.encoder, built.path
    channel_input, fusion = build_channel_input(strategy, num_input_channels, built.input_mapping)
    identity = {
        "encoder_type": encoder_type,
        "input_size": input_size,
        "input_mapping": built.input_mapping.name,
        "channels": f"{strategy}:{num_input_channels}",
        "embedding_dim": EMBEDDING_DIM * encoder_passes(strategy, num_input_channels),  # what embed() returns
        "checkpoint_file": path.name if path else None,
        "checkpoint_sha256": file_sha256(path) if path else None,
    }
    store_encoder = train_encoder or path is None
    # Only a frozen encoder whose weights the identity pins (by file hash) may share remembered embeddings.
    memo = None if store_encoder else EmbeddingMemo.from_environment(identity)
    return SAMSegmentationNetwork(
        channel_input,
        encoder,
        fusion,
        head_module,
        identity,
        train_encoder=train_encoder,
        store_encoder=store_encoder,
        embedding_memo=memo,
    )
