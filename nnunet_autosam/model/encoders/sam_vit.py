"""SAM's ViT image encoders (vit_b, vit_l, vit_h, MedSAM's vit_b, and a tiny one for tests).

Built with segment_anything's own modules, arguments as in its build_sam.py, loaded from the
official checkpoint files. The encoder can run at a smaller input size than SAM's 1024: the
absolute position embedding and the global-attention blocks' relative position tables are
interpolated when the checkpoint is loaded (segment_anything only interpolates ``rel_pos`` at run
time and cannot load a 1024 checkpoint into a smaller encoder at all). Attention runs through
``fast_attention`` (the same weights and math, faster).

What SAM sees: nnU-Net hands the network one z-scored channel per patch. We show SAM what it would
see if the slice were saved as an 8-bit grey picture with a +-3 SD window: resize the patch to the
encoder's square input (bilinear; the head's logits are resized back), clip z to [-3, 3] and map it
onto 0..255 grey, repeated to R, G and B, then normalise with SAM's own pixel mean and std. The
reference implementation feeds the raw grey image without SAM's statistics; we do not, because
the pretrained patch embedding expects them.
"""

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

from nnunet_autosam.model.encoders import describe_encoder_state
from nnunet_autosam.model.encoders.base import (
    EMBEDDING_DIM,
    WEIGHTS_ENV,
    Z_WINDOW,
    EncoderFamily,
    InputMapping,
    load_strictly,
    named_checkpoint,
    state_part,
    weights_folder,
)
from nnunet_autosam.model.encoders.fast_attention import use_fast_attention
from nnunet_autosam.utilities.errors import InputError

PATCH_SIZE = 16  # the ViT's patch: the embedding grid is input_size / 16
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ViTSpec:
    """One encoder type: the ViT's shape and the official file that holds its weights."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    checkpoint_file: str | None
    download_hint: str = ""


_SAM_DOWNLOAD = "https://dl.fbaipublicfiles.com/segment_anything/"
SPECS = {
    "vit_b": ViTSpec(768, 12, 12, (2, 5, 8, 11), "sam_vit_b_01ec64.pth", _SAM_DOWNLOAD),
    "vit_l": ViTSpec(1024, 24, 16, (5, 11, 17, 23), "sam_vit_l_0b3195.pth", _SAM_DOWNLOAD),
    "vit_h": ViTSpec(1280, 32, 16, (7, 15, 23, 31), "sam_vit_h_4b8939.pth", _SAM_DOWNLOAD),
    "medsam_vit_b": ViTSpec(
        768, 12, 12, (2, 5, 8, 11), "medsam_vit_b.pth", "the MedSAM project (github.com/bowang-lab/MedSAM) at "
    ),
    # Same module and key layout as SAM's, a fraction of the size: tests and CPU demos. Random
    # weights unless a checkpoint file is named; it shows the workflow, not SAM's quality.
    "tiny": ViTSpec(64, 2, 2, (1,), None),
}


class ZScoreToSAMInput(InputMapping):
    """(B, 1, H, W) z-scored patches -> (B, 3, S, S) grey pictures in SAM's pixel statistics."""

    name = "zscore_window3sd_to_sam_rgb"
    pixel_mean: torch.Tensor  # buffers, registered in __init__
    pixel_std: torch.Tensor

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


def build_image_encoder(encoder_type: str, input_size: int) -> ImageEncoderViT:
    """segment_anything's own encoder module at ``input_size`` (SAM's attention; the family adds the fast one)."""
    spec = SPECS[encoder_type]
    FAMILY.check_input_size(encoder_type, input_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ImageEncoderViT(
            depth=spec.depth,
            embed_dim=spec.embed_dim,
            img_size=input_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.global_attn_indexes,
            window_size=14,
            out_chans=EMBEDDING_DIM,
        )


def resize_position_tables(encoder_state: dict, encoder: ImageEncoderViT) -> dict:
    """Interpolate pos_embed (bicubic) and rel_pos tables (linear) to the encoder's input size.

    Window-attention blocks keep their 27-entry tables (the window is 14 tokens at any input
    size); only tables whose shape differs from the encoder's are touched.
    """
    target_shapes = {key: value.shape for key, value in encoder.state_dict().items()}
    resized = dict(encoder_state)
    for key, value in encoder_state.items():
        target = target_shapes.get(key)
        if target is None or value.shape == target:
            continue
        if key == "pos_embed":
            grid = value.permute(0, 3, 1, 2).float()
            grid = F.interpolate(grid, size=target[1:3], mode="bicubic", align_corners=False)
            resized[key] = grid.permute(0, 2, 3, 1).to(value.dtype)
        elif key.endswith(("rel_pos_h", "rel_pos_w")):
            table = value.float().t().unsqueeze(0)
            table = F.interpolate(table, size=target[0], mode="linear", align_corners=False)
            resized[key] = table.squeeze(0).t().to(value.dtype)
    return resized


def _vit_shape(encoder_state: dict) -> tuple[int, int]:
    embed_dim = encoder_state["patch_embed.proj.weight"].shape[0]
    depth = len({key.split(".")[1] for key in encoder_state if key.startswith("blocks.")})
    return embed_dim, depth


class SAMViTFamily(EncoderFamily):
    name = "sam_vit"
    types = tuple(SPECS)

    def check_input_size(self, encoder_type: str, input_size: int) -> None:
        if input_size < 64 or input_size % PATCH_SIZE:
            raise InputError(
                f"encoder input size {input_size} is not a multiple of {PATCH_SIZE} of at least 64: "
                f"use 1024 (SAM's own), 512 or 256"
            )

    def embedding_grid(self, encoder_type: str, input_size: int) -> int:
        return input_size // PATCH_SIZE

    def input_mapping(self, encoder_type: str, input_size: int) -> InputMapping:
        return ZScoreToSAMInput(input_size)

    def resolve_checkpoint(self, encoder_type: str, checkpoint: str | None) -> Path | None:
        """A named file, else the official file name inside $nnUNet_SAM_weights; None for ``tiny`` with none named."""
        spec = SPECS[encoder_type]
        if checkpoint is not None or spec.checkpoint_file is None:
            return named_checkpoint(checkpoint) if checkpoint is not None else None
        folder = weights_folder()
        if folder is None:
            raise InputError(
                f"{WEIGHTS_ENV} is not set: export {WEIGHTS_ENV}=/folder/holding/{spec.checkpoint_file} "
                f"(SAM's official file names), or name an absolute file in the plans"
            )
        path = folder / spec.checkpoint_file
        if not path.is_file():
            raise InputError(
                f"SAM checkpoint {path} not found: download it from {spec.download_hint}"
                f"{spec.checkpoint_file} into ${WEIGHTS_ENV}"
            )
        return path

    def describe_encoder_state(self, encoder_state: dict) -> tuple[str, str] | None:
        if "patch_embed.proj.weight" not in encoder_state:
            return None
        embed_dim, depth = _vit_shape(encoder_state)
        matches = [name for name, spec in SPECS.items() if (spec.embed_dim, spec.depth) == (embed_dim, depth)]
        held = f"a SAM ViT {' / '.join(matches)} encoder" if matches else "an unknown SAM ViT encoder"
        fix = f"use --encoder {matches[0]}" if matches else "use a file that matches the encoder type"
        return f"{held} (width {embed_dim}, {depth} blocks)", fix

    def build_encoder(self, encoder_type: str, input_size: int) -> ImageEncoderViT:
        # The fast attention keeps SAM's math and gradients, so trained encoders use it too.
        return use_fast_attention(build_image_encoder(encoder_type, input_size))

    def load_encoder(self, encoder: ImageEncoderViT, encoder_type: str, sam_state: dict, path: Path) -> None:
        encoder_state = state_part(sam_state, "image_encoder.")
        spec = SPECS[encoder_type]
        held = describe_encoder_state(encoder_state)
        if "patch_embed.proj.weight" not in encoder_state or _vit_shape(encoder_state) != (spec.embed_dim, spec.depth):
            official = f", or put {spec.checkpoint_file} in ${WEIGHTS_ENV}" if spec.checkpoint_file else ""
            raise InputError(
                f"SAM checkpoint {path} holds {held[0]}, but encoder {encoder_type!r} needs a SAM ViT "
                f"of width {spec.embed_dim} with {spec.depth} blocks: {held[1]}{official}"
            )
        load_strictly(encoder, resize_position_tables(encoder_state, encoder), path, f"encoder {encoder_type!r}")

    def build_prompt_modules(self, encoder_type: str, input_size: int) -> tuple[PromptEncoder, MaskDecoder]:
        return sam_prompt_modules(self.embedding_grid(encoder_type, input_size), input_size)

    def weights_status(self):
        folder = weights_folder()
        if folder is None:
            return [
                (
                    False,
                    f"SAM ViT: {WEIGHTS_ENV} is not set: export "
                    f"{WEIGHTS_ENV}=/folder/with/sam_vit_b_01ec64.pth to use vit_b, vit_l, vit_h or medsam_vit_b",
                )
            ]
        present = [
            name for name, spec in SPECS.items() if spec.checkpoint_file and (folder / spec.checkpoint_file).is_file()
        ]
        if not present:
            expected = ", ".join(spec.checkpoint_file for spec in SPECS.values() if spec.checkpoint_file)
            return [(False, f"SAM ViT: {WEIGHTS_ENV}={folder} holds none of {expected}: download the ones you need")]
        return [(True, f"SAM ViT: {WEIGHTS_ENV}={folder} has weights for {', '.join(present)}")]


def sam_prompt_modules(grid: int, input_size: int) -> tuple[PromptEncoder, MaskDecoder]:
    """SAM's prompt encoder and mask decoder, arguments as in build_sam.py, for a (grid x grid) embedding.

    Seeded, so that a run without a checkpoint file is reproducible. LiteMedSAM uses the same modules.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        prompt_encoder = PromptEncoder(
            embed_dim=EMBEDDING_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(input_size, input_size),
            mask_in_chans=16,
        )
        mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer_dim=EMBEDDING_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            transformer=TwoWayTransformer(depth=2, embedding_dim=EMBEDDING_DIM, mlp_dim=2048, num_heads=8),
        )
    return prompt_encoder, mask_decoder


FAMILY = SAMViTFamily()
