"""SAM's ViT image encoder: built with segment_anything, loaded from the official checkpoint files.

The encoder can run at a smaller input size than SAM's 1024: the absolute position embedding and
the global-attention blocks' relative position tables are interpolated when the checkpoint is
loaded (segment_anything only interpolates ``rel_pos`` at run time and cannot load a 1024
checkpoint into a smaller encoder at all).
"""

import hashlib
import os
from functools import lru_cache, partial
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT

from nnunet_autosam.encoder_types import (EMBEDDING_DIM, ENCODERS, PATCH_SIZE, WEIGHTS_ENV, check_input_size,
                                          encoder_spec)
from nnunet_autosam.errors import InputError

def build_image_encoder(encoder_type: str, input_size: int) -> ImageEncoderViT:
    """An encoder with segment_anything's own module, arguments as in its build_sam.py, at ``input_size``."""
    spec = encoder_spec(encoder_type)
    check_input_size(input_size)
    # A fixed seed so that every process (DDP ranks, the predictor) builds the same random encoder
    # where no checkpoint overwrites it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ImageEncoderViT(
            depth=spec.depth, embed_dim=spec.embed_dim, img_size=input_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=spec.num_heads,
            patch_size=PATCH_SIZE, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=spec.global_attn_indexes, window_size=14, out_chans=EMBEDDING_DIM)


def resolve_checkpoint(encoder_type: str, checkpoint: Optional[str]) -> Optional[Path]:
    """The SAM file to load: a named file (absolute, or inside $nnUNet_SAM_weights), else the official one.

    Returns None for an encoder with no official file (``tiny``) when none is named.
    """
    spec = encoder_spec(encoder_type)
    file_name = checkpoint or spec.checkpoint_file
    if file_name is None:
        return None
    path = Path(file_name).expanduser()
    if not path.is_absolute():
        folder = os.environ.get(WEIGHTS_ENV)
        if not folder:
            raise InputError(f"{WEIGHTS_ENV} is not set: export {WEIGHTS_ENV}=/folder/holding/{file_name} "
                             f"(SAM's official file names), or name an absolute file in the plans")
        path = Path(folder).expanduser() / path
    if not path.is_file():
        hint = (f"download it from {spec.download_hint}{file_name}" if spec.download_hint
                else "name an existing file")
        raise InputError(f"SAM checkpoint {path} not found: {hint} into ${WEIGHTS_ENV}")
    return path


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a checkpoint file, computed once per process for an unchanged file (vit_h is 2.5 GB)."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def load_sam_state_dict(path: Path) -> dict:
    """A full SAM state dict (image_encoder.*, prompt_encoder.*, mask_decoder.*) from an official file.

    SAM's and MedSAM's released files are plain state dicts; MedSAM's training checkpoints wrap
    one under "model", which is accepted too. Loaded with weights_only=True: no code runs.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"SAM checkpoint {path} cannot be read ({reason[:120]}): the file is truncated or "
                         f"not a PyTorch checkpoint; download it again") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not any(k.startswith("image_encoder.") for k in state):
        raise InputError(f"SAM checkpoint {path} holds no image_encoder.* weights: it is not a SAM checkpoint; "
                         f"use an official SAM or MedSAM file")
    return state


def _checkpoint_shape(encoder_state: dict) -> Tuple[int, int]:
    embed_dim = encoder_state["patch_embed.proj.weight"].shape[0]
    depth = len({key.split(".")[1] for key in encoder_state if key.startswith("blocks.")})
    return embed_dim, depth


def _check_architecture(encoder_type: str, encoder_state: dict, path: Path) -> None:
    """Fail in one line when the file holds another ViT than the encoder type asks for."""
    spec = encoder_spec(encoder_type)
    if "patch_embed.proj.weight" not in encoder_state:
        raise InputError(f"SAM checkpoint {path} has no image_encoder.patch_embed weights: use an official SAM file")
    embed_dim, depth = _checkpoint_shape(encoder_state)
    if (embed_dim, depth) == (spec.embed_dim, spec.depth):
        return
    matches = [name for name, other in ENCODERS.items() if (other.embed_dim, other.depth) == (embed_dim, depth)]
    held = f"a {' / '.join(matches)} encoder" if matches else "an unknown encoder"
    fix = f"use --encoder {matches[0]}" if matches else "use a file that matches the encoder type"
    official = f", or put {spec.checkpoint_file} in ${WEIGHTS_ENV}" if spec.checkpoint_file else ""
    raise InputError(f"SAM checkpoint {path} holds {held} (width {embed_dim}, {depth} blocks), but encoder "
                     f"{encoder_type!r} needs width {spec.embed_dim} and {spec.depth} blocks: {fix}{official}")


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


def load_encoder_weights(encoder: ImageEncoderViT, encoder_type: str, sam_state: dict, path: Path) -> None:
    """Load the image_encoder.* part of a SAM state dict into ``encoder``, strictly."""
    encoder_state = {k[len("image_encoder."):]: v for k, v in sam_state.items() if k.startswith("image_encoder.")}
    _check_architecture(encoder_type, encoder_state, path)
    result = encoder.load_state_dict(resize_position_tables(encoder_state, encoder), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"SAM checkpoint {path} does not fit encoder {encoder_type!r} (missing "
                         f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}): use an official file")
