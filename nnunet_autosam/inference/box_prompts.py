"""Box-prompted SAM on one volume: the family's prompt encoder and mask decoder, one box per class and slice.

The geometry (tight boxes from labels, their scaling to the encoder input's frame, clipping) and the
overlap rule live here; reading and writing cases and the command are in zero_shot.py.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_autosam.model import encoders
from nnunet_autosam.model.encoders.base import load_strictly, state_part
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.precision import encoder_autocast

DEFAULT_FILE_ENDING = ".nii.gz"


def load_sam_part(module: nn.Module, prefix: str, sam_state: dict, path: Path) -> None:
    """Load the ``prefix``* weights of a SAM state dict into ``module``, strictly (none depend on the input size)."""
    state = state_part(sam_state, prefix)
    if not state:
        raise InputError(
            f"SAM checkpoint {path} holds no {prefix}* weights: box prompting needs a whole SAM file "
            f"(image encoder, prompt encoder, mask decoder) such as the official ones"
        )
    load_strictly(module, state, path, f"the {prefix[:-1]} of box prompting")


class BoxPromptSegmenter(nn.Module):
    """SAM with box prompts: z-scored slices -> image embeddings; boxes -> one mask logit map per box."""

    def __init__(
        self,
        input_mapping: nn.Module,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        input_size: int,
    ):
        super().__init__()
        self.input_mapping = input_mapping
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.input_size = input_size

    @classmethod
    def build(cls, encoder_type: str, input_size: int, checkpoint: str | None = None) -> "BoxPromptSegmenter":
        """All three parts from one weights file (random weights for ``tiny`` when none is named).

        The encoder's family builds them: SAM's modules for SAM's ViTs, LiteMedSAM's own for lite_medsam.
        """
        built = encoders.build_encoder(encoder_type, input_size, checkpoint, frozen=True)
        prompt_encoder, mask_decoder = encoders.family(encoder_type).build_prompt_modules(encoder_type, input_size)
        if built.path is not None:
            load_sam_part(prompt_encoder, "prompt_encoder.", built.sam_state, built.path)
            load_sam_part(mask_decoder, "mask_decoder.", built.sam_state, built.path)
        return cls(built.input_mapping, built.encoder, prompt_encoder, mask_decoder, input_size).eval()

    @property
    def device(self) -> torch.device:
        return next(self.image_encoder.parameters()).device

    def embed(self, slices: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) z-scored slices -> (B, 256, G, G) fp32 image embeddings, the encoder in the precision the
        trainers' frozen encoders use (nnunet_autosam.utilities.precision.encoder_dtype)."""
        mapped = self.input_mapping(slices)
        with encoder_autocast(slices.device):
            return self.image_encoder(mapped).float()

    def decode(self, embedding: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """One slice's embedding (1, 256, G, G) and K boxes -> (K, 4G, 4G) mask logits.

        Boxes are (K, 4) x0, y0, x1, y1 in the encoder input's frame, all prompted in one decoder pass
        (the decoder repeats the embedding per box). Everything SAM does after the image encoder is
        here, so a test can swap this method for an oracle.
        """
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        masks, _ = self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),  # type: ignore[operator]  # PromptEncoder method, not a Tensor
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return masks[:, 0]

    def slice_logits(self, embedding: torch.Tensor, boxes: np.ndarray, slice_shape: tuple) -> torch.Tensor:
        """K boxes in slice pixels -> (K, H, W) mask logits on the slice's own grid."""
        scaled = torch.as_tensor(
            boxes_to_input_frame(boxes, slice_shape, self.input_size), dtype=torch.float32, device=embedding.device
        )
        low_res = self.decode(embedding, scaled)
        return F.interpolate(low_res[:, None], size=tuple(slice_shape), mode="bilinear", align_corners=False)[:, 0]


def tight_boxes(label_slice: np.ndarray, jitter: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The foreground classes present in a slice and one box each: (K,) labels, (K, 4) x0, y0, x1, y1.

    Corners are pixel indices, max inclusive (SAM's box convention). With ``jitter`` each side moves
    by its own uniform random integer in [-jitter, jitter]; the box is then kept inside the slice.
    """
    classes = np.unique(label_slice)
    classes = classes[classes > 0]
    boxes = np.empty((len(classes), 4), dtype=np.int64)
    for row, label in enumerate(classes):
        ys, xs = np.nonzero(label_slice == label)
        boxes[row] = xs.min(), ys.min(), xs.max(), ys.max()
    if jitter:
        height, width = label_slice.shape
        moved = np.clip(
            boxes + rng.integers(-jitter, jitter + 1, size=boxes.shape),
            0,
            [width - 1, height - 1, width - 1, height - 1],
        )
        boxes = np.concatenate([np.minimum(moved[:, :2], moved[:, 2:]), np.maximum(moved[:, :2], moved[:, 2:])], 1)
    return classes, boxes


def boxes_to_input_frame(boxes: np.ndarray, slice_shape: tuple, input_size: int) -> np.ndarray:
    """Slice-pixel boxes -> the square encoder input's frame: x times S/W, y times S/H, as the slice is resized.

    Coordinates are scaled as SAM's own ResizeLongestSide scales them; the prompt encoder adds the
    half-pixel shift itself.
    """
    height, width = slice_shape
    return boxes * np.array([input_size / width, input_size / height] * 2)


def clip_to_boxes(logits: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """(K, H, W) logits with everything outside box k set to -inf in map k."""
    _, height, width = logits.shape
    corners = torch.as_tensor(boxes, device=logits.device)[:, :, None, None]
    ys = torch.arange(height, device=logits.device)[:, None]
    xs = torch.arange(width, device=logits.device)[None, :]
    inside = (xs >= corners[:, 0]) & (xs <= corners[:, 2]) & (ys >= corners[:, 1]) & (ys <= corners[:, 3])
    return logits.masked_fill(~inside, float("-inf"))


def resolve_overlaps(classes: np.ndarray, logits: torch.Tensor) -> np.ndarray:
    """One (H, W) label map from (K, H, W) logits: per pixel the class with the highest logit among those
    above 0 (argmax keeps the first, so ties go to the lower label), 0 where no logit is above 0."""
    best = logits.argmax(dim=0)
    labels = torch.as_tensor(classes, device=logits.device)[best]
    return torch.where(logits.amax(dim=0) > 0, labels, 0).cpu().numpy()


@torch.no_grad()
def segment_volume(
    segmenter: BoxPromptSegmenter,
    volume: np.ndarray,
    reference: np.ndarray,
    rng: np.random.Generator,
    jitter: int = 0,
    batch_size: int = 8,
    clip_to_box: bool = False,
) -> np.ndarray:
    """(D, H, W) labels for a z-scored (D, H, W) volume, prompted with boxes from the reference labels.

    Only slices with reference foreground are encoded, ``batch_size`` at a time; each slice's boxes
    then go through the decoder together.
    """
    prediction = np.zeros(volume.shape, dtype=np.uint8)
    prompts = {z: tight_boxes(reference[z], jitter, rng) for z in range(len(volume))}
    prompted = [z for z, (classes, _) in prompts.items() if len(classes)]
    for start in range(0, len(prompted), batch_size):
        batch = prompted[start : start + batch_size]
        embeddings = segmenter.embed(torch.from_numpy(volume[batch][:, None]).to(segmenter.device))
        for z, embedding in zip(batch, embeddings):
            classes, boxes = prompts[z]
            logits = segmenter.slice_logits(embedding[None], boxes, volume.shape[1:])
            if clip_to_box:
                logits = clip_to_boxes(logits, boxes)
            prediction[z] = resolve_overlaps(classes, logits)
    return prediction
