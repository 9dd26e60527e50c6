"""What every head is: a module from the (B, 256, G, G) embedding to one logit map per class at 4G x 4G."""

from torch import nn

from nnunet_autosam.model.encoders.base import EMBEDDING_DIM


class SegmentationHead(nn.Module):
    """Built as ``head_class(num_classes, grid_size)``; loads its own pretrained parts from a SAM file."""

    # Whether the head runs under bf16 autocast on a CPU where CPU bf16 is on (nnunet_autosam.utilities.precision).
    # A head whose bf16 training is slower, or scores lower, than its fp32 one says False and runs in fp32 there.
    cpu_bf16 = True

    def __init__(self, num_classes: int, grid_size: int, dim: int = EMBEDDING_DIM):
        super().__init__()
        self.num_classes = num_classes
        self.grid_size = grid_size  # side of the embedding grid, for heads with position encodings
        self.dim = dim

    def load_pretrained(self, sam_state: dict) -> None:
        """Start from the parts of a whole SAM state dict this head shares with SAM; the default has none."""
