"""What the plans say about the SAM network, read without building anything.

The trainers, the embedding cache and ``nnunet-autosam plans`` all read the same settings of a
2d configuration's ``sam_encoder`` entry: which encoder to build, how the image channels reach it,
and whether training reads cached embeddings. They live here, apart from the modules that act on
them, so that imports run one way (trainer -> cache -> network -> encoders; plans -> settings).
"""

import os
from dataclasses import dataclass

from nnunet_autosam.utilities.errors import InputError

CACHE_ENV = "AUTOSAM_EMBEDDING_CACHE"


@dataclass(frozen=True)
class EncoderSettings:
    """What the plans say about the encoder (configuration key ``sam_encoder``)."""

    encoder_type: str = "vit_b"
    input_size: int = 1024
    checkpoint: str | None = None  # a file name inside $nnUNet_SAM_weights or an absolute path
    channels: str | None = None  # stack | separate (model/channel_input.py); None: the default for the channel count
    num_channels: int | None = None  # the channel count the plans were written for (None: not recorded)

    @classmethod
    def from_configuration(cls, configuration: dict) -> "EncoderSettings":
        """Settings from a plans configuration; plain nnUNetPlans (no ``sam_encoder``) means vit_b at 1024."""
        entry = dict(configuration.get("sam_encoder") or {})
        return cls(
            encoder_type=entry.get("type", cls.encoder_type),
            input_size=int(entry.get("input_size", cls.input_size)),
            checkpoint=entry.get("checkpoint"),
            channels=entry.get("channels"),
            num_channels=int(entry["num_channels"]) if entry.get("num_channels") is not None else None,
        )


@dataclass(frozen=True)
class CacheMode:
    kind: str = "off"  # off | cache | cache_views
    views: int = 1

    @property
    def enabled(self) -> bool:
        return self.kind != "off"

    def __str__(self) -> str:
        return f"cache_views:{self.views}" if self.kind == "cache_views" else self.kind


def parse_mode(text, source: str = CACHE_ENV) -> CacheMode:
    """``off`` (or empty/none), ``cache``, or ``cache_views:K`` with K >= 1."""
    value = "" if text is None else str(text).strip().lower()
    if value in ("", "off", "none", "0", "false"):
        return CacheMode()
    if value == "cache":
        return CacheMode("cache", 1)
    if value.startswith("cache_views"):
        count = value[len("cache_views") :].lstrip(":= ")
        if count.isdigit() and int(count) >= 1:
            return CacheMode("cache_views", int(count))
    raise InputError(
        f"{source}={text!r} is not an embedding cache mode: use off, cache, or cache_views:K "
        f"(K augmented views per slice, e.g. cache_views:4)"
    )


def mode_from_settings(configuration: dict) -> CacheMode:
    """The mode for a training: $AUTOSAM_EMBEDDING_CACHE if set, else the plans' sam_encoder.embedding_cache."""
    if os.environ.get(CACHE_ENV) is not None:
        return parse_mode(os.environ[CACHE_ENV])
    planned = (configuration.get("sam_encoder") or {}).get("embedding_cache")
    return parse_mode(planned, "the plans' sam_encoder.embedding_cache")
