"""SimCLR's parts: the NT-Xent loss, the projection head, and the two augmented views of each patch."""

import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from torch import nn


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent: row i of ``z1`` and row i of ``z2`` are a positive pair, all other rows negatives.

    Cross-entropy over cosine similarities / temperature, averaged over all 2N views; symmetric in
    (z1, z2). Needs N >= 2 (with one pair there are no negatives).
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"expected two (N, D) projections of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    similarity = z @ z.t() / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_pairs, float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, positives)


class NTXentLoss(nn.Module):
    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent_loss(z1, z2, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class ProjectionHead(nn.Module):
    """Global average pool of a feature map, then a two-layer MLP (SimCLR's g)."""

    def __init__(self, channels: int, hidden: int | None = None, out_dim: int = 128):
        super().__init__()
        hidden = hidden or channels
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features.flatten(2).mean(2))


class TwoViews(BasicTransform):
    """Apply ``view_transform`` twice to one sample; return both images stacked on the channel axis.

    The labels are replaced by background first (the -1 outside-the-mask marker stays, as nnU-Net's
    MaskImageTransform reads it), so no label information reaches the batch.
    """

    def __init__(self, view_transform: BasicTransform):
        super().__init__()
        self.view_transform = view_transform

    def __call__(self, **data_dict) -> dict:
        image, segmentation = data_dict["image"], data_dict["segmentation"]
        blank = torch.where(segmentation < 0, segmentation, torch.zeros_like(segmentation))
        views = [self.view_transform(image=image.clone(), segmentation=blank.clone()) for _ in range(2)]
        return {"image": torch.cat([views[0]["image"], views[1]["image"]]), "segmentation": views[0]["segmentation"]}

    def __repr__(self):
        return f"TwoViews({self.view_transform!r})"


def strengthen_for_contrastive(transforms: ComposeTransforms, min_probability: float) -> ComposeTransforms:
    """Random crop inside nnU-Net's enlarged patch, and every random transform at least ``min_probability``."""
    for transform in transforms.transforms:
        if isinstance(transform, SpatialTransform):
            transform.random_crop = True
            transform.patch_center_dist_from_border = [size / 2 for size in transform.patch_size]
            transform.p_rotation = max(transform.p_rotation, min_probability)
            transform.p_scaling = max(transform.p_scaling, min_probability)
        elif isinstance(transform, RandomTransform):
            transform.apply_probability = max(transform.apply_probability, min_probability)
    return transforms
