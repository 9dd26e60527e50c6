"""The patches a cache stores per slice: the centre patch (mode ``cache``) or K augmented views.

See the package docstring for the modes.
"""

from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np

from nnunet_autosam.experiment_planning.settings import CACHE_ENV
from nnunet_autosam.utilities.errors import InputError

LABEL_DTYPE = np.uint8


def _labels_to_uint8(label: np.ndarray) -> np.ndarray:
    label = np.where(label < 0, 0, label)  # nnU-Net's padding/outside label -1 -> background (RemoveLabelTansform)
    if label.size and (label.max() > np.iinfo(LABEL_DTYPE).max):
        raise InputError(
            f"label value {int(label.max())} does not fit the cache's uint8 labels: train on the fly ({CACHE_ENV}=off)"
        )
    return label.astype(LABEL_DTYPE)


def centre_bbox(shape: Sequence[int], patch_size: Sequence[int]) -> list:
    """Half-open [start, end) per axis of a patch centred on the slice (start < 0 or end > shape pads)."""
    return [[(s - p) // 2, (s - p) // 2 + p] for s, p in zip(shape, patch_size)]


def centre_patch(data, seg, z: int, patch_size: Sequence[int]):
    """Slice ``z`` of a case (data, seg of shape (C, Z, Y, X)) padded / centre-cropped to ``patch_size``.

    Returns the (C, py, px) float32 patch and its (py, px) uint8 label, as the network sees it.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

    bbox = [[z, z + 1]] + centre_bbox(data.shape[2:], patch_size)
    patch = np.asarray(crop_and_pad_nd(data, bbox, 0), dtype=np.float32)[:, 0]
    label = np.asarray(crop_and_pad_nd(seg, bbox, -1))[0, 0]
    return patch, _labels_to_uint8(label)


class ViewSampler:
    """K augmented views of a slice, made by nnU-Net's own crop sampling and training transforms."""

    def __init__(
        self, dataset, label_manager, transforms, initial_patch_size, patch_size, oversample_foreground_percent: float
    ):
        from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

        self.transforms = transforms
        self.oversample = oversample_foreground_percent
        # Only its get_bbox is used: nnU-Net's crop placement (random, or around a foreground voxel).
        self.loader = nnUNetDataLoader(
            dataset,
            1,
            list(initial_patch_size),
            list(patch_size),
            label_manager,
            oversample_foreground_percent=oversample_foreground_percent,
        )

    def views(self, data, seg, class_locations: dict, z: int, count: int, seed: int):
        import torch
        from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
        from threadpoolctl import threadpool_limits

        in_slice = {key: _slice_locations(locations, z) for key, locations in class_locations.items()}
        patches, labels = [], []
        state = np.random.get_state()
        try:
            # One thread, as nnU-Net's loader augments: these small ops only lose to threading overhead.
            with torch.random.fork_rng(devices=[]), threadpool_limits(limits=1, user_api=None):
                np.random.seed(seed)
                torch.manual_seed(seed)
                for _ in range(count):
                    force_fg = bool(np.random.uniform() < self.oversample)
                    lbs, ubs = self.loader.get_bbox(np.array((1, *data.shape[2:])), force_fg, in_slice)
                    bbox = [[z, z + 1]] + [[lb, ub] for lb, ub in zip(lbs[1:], ubs[1:])]
                    image = torch.from_numpy(np.asarray(crop_and_pad_nd(data, bbox, 0), dtype=np.float32)[:, 0])
                    label = torch.from_numpy(np.asarray(crop_and_pad_nd(seg, bbox, -1)).astype(np.int16)[:, 0])
                    with torch.no_grad():
                        out = self.transforms(image=image, segmentation=label)
                    patches.append(out["image"].numpy().astype(np.float32))
                    labels.append(_labels_to_uint8(out["segmentation"].numpy()[0]))
        finally:
            np.random.set_state(state)
        return np.stack(patches), np.stack(labels)


def _slice_locations(locations: np.ndarray, z: int) -> np.ndarray:
    """nnU-Net's per-case foreground voxels (rows: channel, z, y, x) inside slice z, with z set to 0."""
    locations = np.asarray(locations)
    if locations.size == 0:
        return locations
    inside = locations[locations[:, 1] == z].copy()
    inside[:, 1] = 0
    return inside


def training_view_sampler(
    trainer_class, dataset, configuration_manager, label_manager, oversample_foreground_percent: float
) -> ViewSampler:
    """The sampler for ``cache_views``, from nnU-Net's own augmentation settings and the trainer's transforms.

    The settings hook runs on a stand-in holding only what it reads: the cache command has no trainer
    (no results folder to create one in), and a real trainer must keep its own inference mirroring.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    stand_in = SimpleNamespace(
        configuration_manager=configuration_manager, print_to_log_file=lambda *args, **kwargs: None
    )
    rotation, dummy_2d, initial_patch_size, mirror_axes = (
        nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size(stand_in)
    )
    patch_size = configuration_manager.patch_size
    transforms = trainer_class.get_training_transforms(
        patch_size,
        rotation,
        None,
        mirror_axes,
        dummy_2d,
        use_mask_for_norm=configuration_manager.use_mask_for_norm,
        is_cascaded=False,
        foreground_labels=label_manager.foreground_labels,
        regions=None,
        ignore_label=label_manager.ignore_label,
    )
    return ViewSampler(
        dataset, label_manager, transforms, initial_patch_size, patch_size, oversample_foreground_percent
    )
