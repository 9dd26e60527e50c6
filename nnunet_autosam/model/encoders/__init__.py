"""Encoder families and the registry of encoder types.

Each family is one module that defines ``FAMILY``, an instance of ``base.EncoderFamily``; adding a
family (EfficientViT-SAM, SAM2's Hiera, ...) is one new module plus one line in ``FAMILY_MODULES``.
Everything outside this package asks ``family(encoder_type)`` about an encoder.
"""

import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from torch import nn

from nnunet_autosam.model.encoders.base import EncoderFamily, InputMapping, load_sam_state_dict
from nnunet_autosam.utilities.errors import InputError

FAMILY_MODULES = (
    "nnunet_autosam.model.encoders.sam_vit",
    "nnunet_autosam.model.encoders.lite_medsam",
)


@lru_cache(maxsize=1)
def _families_by_type() -> dict[str, EncoderFamily]:
    by_type = {}
    for module_name in FAMILY_MODULES:
        found = importlib.import_module(module_name).FAMILY
        by_type.update({encoder_type: found for encoder_type in found.types})
    return by_type


def encoder_types() -> list:
    """Every encoder type, in registry order."""
    return list(_families_by_type())


def family(encoder_type: str) -> EncoderFamily:
    families = _families_by_type()
    if encoder_type not in families:
        raise InputError(f"unknown encoder type {encoder_type!r}: use one of {', '.join(families)}")
    return families[encoder_type]


def families() -> list:
    """Each family once, in registry order."""
    return list(dict.fromkeys(_families_by_type().values()))


def describe_encoder_state(encoder_state: dict) -> tuple[str, str]:
    """(what a checkpoint's image encoder is, the fix), for errors about a file that does not fit."""
    for candidate in families():
        description = candidate.describe_encoder_state(encoder_state)
        if description:
            return description
    return "an unknown encoder", "use a file that matches the encoder type"


@dataclass
class BuiltEncoder:
    """An encoder as its family builds and loads it, with the file it came from (None: random weights)."""

    encoder: nn.Module
    input_mapping: InputMapping
    path: Path | None
    sam_state: dict  # the whole file's state dict (empty without a file): heads and prompting load their parts


def build_encoder(encoder_type: str, input_size: int, checkpoint: str | None, frozen: bool) -> BuiltEncoder:
    """Build an encoder, load its weights file where the type has one, and (``frozen``) switch it to its
    inference form: the one way the network and zero-shot prompting get an encoder."""
    found = family(encoder_type)
    found.check_input_size(encoder_type, input_size)
    encoder = found.build_encoder(encoder_type, input_size)
    path = found.resolve_checkpoint(encoder_type, checkpoint)
    sam_state = {}
    if path is not None:
        sam_state = load_sam_state_dict(path)
        found.load_encoder(encoder, encoder_type, sam_state, path)
    if frozen:
        encoder = found.inference_form(encoder_type, encoder)
    return BuiltEncoder(encoder, found.input_mapping(encoder_type, input_size), path, sam_state)
