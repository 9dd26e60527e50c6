"""What every encoder family provides, and the file handling they share.

An encoder family is one kind of SAM image encoder (SAM's ViT, LiteMedSAM's TinyViT, ...). The rest
of the project never looks inside an encoder: it asks the family which input sizes work, how big
the embedding grid is, how nnU-Net's z-scored patch becomes the encoder's input, where the weights
come from, and which prompt encoder and mask decoder go with them (zero-shot prompting and the
AutoSAM head start from those).
"""

import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from nnunet_autosam.utilities.errors import InputError

EMBEDDING_DIM = 256  # every SAM-family image embedding has SAM's 256 channels: the mask decoder expects them
WEIGHTS_ENV = "nnUNet_SAM_weights"
Z_WINDOW = 3.0  # z-scored intensities beyond +-3 SD are clipped before any encoder sees them


class EncoderFamily:
    """The interface a family module implements; its instance is named ``FAMILY`` in that module."""

    name: str = ""
    types: tuple[str, ...] = ()

    def check_input_size(self, encoder_type: str, input_size: int) -> None:
        """Raise InputError (one line, with the fix) for an input size the family cannot run."""
        raise NotImplementedError

    def embedding_grid(self, encoder_type: str, input_size: int) -> int:
        """Side of the square (256, G, G) embedding the encoder gives for a square input of ``input_size``."""
        raise NotImplementedError

    def input_mapping(self, encoder_type: str, input_size: int) -> "InputMapping":
        raise NotImplementedError

    def resolve_checkpoint(self, encoder_type: str, checkpoint: str | None) -> Path | None:
        """The weights file to load (``checkpoint`` names one), or None where the type has no file (random)."""
        raise NotImplementedError

    def describe_encoder_state(self, encoder_state: dict) -> tuple[str, str] | None:
        """(what it is, the fix) when ``encoder_state`` (image_encoder.* keys, prefix removed) is of this family.

        E.g. ("a vit_b / medsam_vit_b encoder (width 768, 12 blocks)", "use --encoder vit_b"); None otherwise.
        """
        raise NotImplementedError

    def build_encoder(self, encoder_type: str, input_size: int) -> nn.Module:
        """The encoder module, seeded (every process builds the same random weights where no file overwrites them)."""
        raise NotImplementedError

    def load_encoder(self, encoder: nn.Module, encoder_type: str, sam_state: dict, path: Path) -> None:
        """Load the image_encoder.* part of ``sam_state`` strictly, or fail in one line naming ``path``."""
        raise NotImplementedError

    def inference_form(self, encoder_type: str, encoder: nn.Module) -> nn.Module:
        """A frozen encoder, after its weights are loaded, in a form that computes the same embedding faster.

        Never called for an encoder that is trained. The default keeps the module as it is.
        """
        return encoder

    def build_prompt_modules(self, encoder_type: str, input_size: int) -> tuple[nn.Module, nn.Module]:
        """The family's (PromptEncoder, MaskDecoder) for ``input_size``, seeded; the same key layout as its files."""
        raise NotImplementedError

    def weights_status(self) -> Sequence[tuple[bool, str]]:
        """For ``doctor``: (ready, one line) about where this family's weights are."""
        raise NotImplementedError


class InputMapping(nn.Module):
    """(B, 1, H, W) z-scored patches -> (B, 3, S, S) encoder input, one image channel at a time (channel_input.py
    applies it per channel). ``name`` is part of the encoder identity."""

    name: str = ""


def weights_folder() -> Path | None:
    folder = os.environ.get(WEIGHTS_ENV)
    return Path(folder).expanduser() if folder else None


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a weights file, computed once per process for an unchanged file (vit_h is 2.5 GB)."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def load_sam_state_dict(path: Path) -> dict:
    """A whole SAM-family state dict (image_encoder.*, prompt_encoder.*, mask_decoder.*) from a file.

    Released files are plain state dicts; training checkpoints (MedSAM's, LiteMedSAM's) wrap one under
    "model", which is accepted too. Loaded with weights_only=True: no code from the file runs.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(
            f"SAM checkpoint {path} cannot be read ({reason[:120]}): the file is truncated or "
            f"not a PyTorch checkpoint; download it again"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not any(k.startswith("image_encoder.") for k in state):
        raise InputError(
            f"SAM checkpoint {path} holds no image_encoder.* weights: it is not a SAM checkpoint; "
            f"use an official SAM, MedSAM or LiteMedSAM file"
        )
    return state


def state_part(sam_state: dict, prefix: str) -> dict:
    """The entries of ``sam_state`` under ``prefix``, with the prefix removed."""
    return {key[len(prefix) :]: value for key, value in sam_state.items() if key.startswith(prefix)}


def named_checkpoint(checkpoint: str) -> Path:
    """A file named in the plans: an absolute path, or a name inside $nnUNet_SAM_weights; it must exist."""
    path = Path(checkpoint).expanduser()
    if not path.is_absolute():
        folder = weights_folder()
        if folder is None:
            raise InputError(
                f"{WEIGHTS_ENV} is not set: export {WEIGHTS_ENV}=/folder/holding/{checkpoint}, "
                f"or name an absolute file in the plans"
            )
        path = folder / path
    if not path.is_file():
        raise InputError(f"SAM checkpoint {path} not found: name an existing file (nnunet-autosam plans --checkpoint)")
    return path


def load_strictly(module: nn.Module, state: dict, path: Path, what: str) -> None:
    """load_state_dict with a one-line error naming the file, for weights whose layout was already recognised."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that differ
        raise InputError(
            f"SAM checkpoint {path} does not fit {what} ({str(error).splitlines()[-1].strip()[:120]}): "
            f"use an official file"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise InputError(
            f"SAM checkpoint {path} does not fit {what} (missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}): use an official file"
        )
