"""The "UNet + SimCLR" baseline: contrastive pretraining of nnU-Net's own 2D encoder, without labels.

Two stock commands (``export nnUNet_extTrainer=$(nnunet-autosam trainer-dir)`` first):

    nnUNetv2_train DATASET 2d all -tr nnUNetTrainerSimCLR
    nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerSimCLRFinetune -pretrained_weights \
        $nnUNet_results/DatasetXXX/nnUNetTrainerSimCLR__nnUNetPlans__2d/fold_all/checkpoint_final.pth

The first trains ``network.encoder`` of the network the plans describe (PlainConvUNet or
ResidualEncoderUNet, built by nnU-Net's own build_network_architecture) with SimCLR; the second is
stock nnU-Net under its own name (so its folds sit beside plain nnU-Net's), which loads every encoder
weight through nnU-Net's load_pretrained_weights and fine-tunes on a few-label fold
(``nnunet-autosam splits``).

Recipe and defaults:
- views: nnU-Net's own training augmentation (get_training_transforms) applied twice, with independent
  random draws, to the same patch. Made stronger for contrastive learning, as SimCLR needs views that
  differ: the final crop is taken at a random place inside nnU-Net's enlarged patch (a random crop)
  instead of its centre, and rotation, scaling and every intensity/noise/blur/low-resolution/gamma
  transform fire with probability at least ``view_augmentation_probability`` = 0.5 (mirroring stays
  at nnU-Net's 0.5 per axis). The two views travel through nnU-Net's dataloader stacked on the channel
  axis and are split in train_step;
- labels are never used: patches are drawn at random places (no foreground oversampling) and the
  labels are blanked to background before augmentation; only the -1 "outside the nonzero mask" marker
  is kept, for nnU-Net's masking transform;
- every case trains, whatever the fold (``all`` is the documented one): there is nothing to hold out.
  "Validation" is the same contrastive loss on fresh augmentations of those cases, logged as val_loss;
  there is no pseudo Dice (logged as NaN, so nnU-Net's progress plot still draws) and no
  checkpoint_best; the final sliding-window validation is skipped, as no segmentation head is trained;
- projection head: global average pool of the deepest encoder stage -> Linear(C, C) -> ReLU ->
  Linear(C, 128); NT-Xent loss at temperature 0.1 over the 2B views of a batch of B patches (2B-2
  negatives per view; the plans' batch size, at least 2);
- optimiser: AdamW, learning rate 1e-3, weight decay 1e-4, nnU-Net's poly decay, gradients clipped
  at 12 as nnU-Net does. Not nnU-Net's SGD (1e-2, Nesterov momentum 0.99): that setting is tuned to
  the CE + Dice loss, and small-batch SimCLR without LARS is usually trained with Adam-type optimisers.
  Only the encoder and the projection head are optimised; the decoder keeps its initialisation;
- schedule: nnU-Net's 1000 epochs of 250 iterations (50 validation iterations), shortened by
  AUTOSAM_NUM_EPOCHS, AUTOSAM_ITERS_PER_EPOCH and AUTOSAM_VAL_ITERS_PER_EPOCH;
- checkpoints: ``network_weights`` is the full network's state dict (pretrained encoder, untouched
  decoder), exactly what load_pretrained_weights checks key by key; the projection head is stored
  apart, under ``simclr_projection_head``, which nnU-Net never reads.
One device only (no DDP): NT-Xent would need its negatives gathered across devices.
"""

from time import time

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_autosam.training.contrastive import (
    NTXentLoss,
    ProjectionHead,
    TwoViews,
    strengthen_for_contrastive,
)
from nnunet_autosam.training.trainer_base import nnUNetTrainerEnvSchedule
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.precision import training_autocast

HEAD_KEY = "simclr_projection_head"


class nnUNetTrainerSimCLR(nnUNetTrainerEnvSchedule):
    """SimCLR pretraining of nnU-Net's 2D encoder on every case, without labels (see the module docstring)."""

    temperature: float = 0.1
    projection_dim: int = 128
    view_augmentation_probability: float = 0.5

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        # Why: SimCLR's own hyperparameters and the label-free sampling (the base applies the AUTOSAM_* schedule).
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            raise InputError(
                "nnUNetTrainerSimCLR runs on one device: NT-Xent needs all negatives on it; drop -num_gpus"
            )
        if self.configuration_manager.batch_size < 2:
            raise InputError(
                f"configuration {configuration!r} has batch size {self.configuration_manager.batch_size}, "
                f"but NT-Xent needs at least 2 patches per batch: raise batch_size in the plans"
            )
        self.initial_lr = 1e-3
        self.weight_decay = 1e-4
        self.oversample_foreground_percent = 0.0  # foreground oversampling would read the labels
        self.enable_deep_supervision = False  # the decoder is not trained
        self.projection_head: ProjectionHead | None = None  # -> configure_optimizers, once the encoder exists
        self.print_to_log_file(
            f"SimCLR pretraining of the encoder on all cases, labels unused: NT-Xent at "
            f"temperature {self.temperature}, projection to {self.projection_dim} dims, "
            f"AdamW lr {self.initial_lr}, weight decay {self.weight_decay}"
        )

    def _network_module(self) -> nn.Module:
        module = self.network.module if isinstance(self.network, DDP) else self.network
        return module._orig_mod if isinstance(module, OptimizedModule) else module

    def _encoder(self) -> nn.Module:
        encoder = getattr(self._network_module(), "encoder", None)
        if encoder is None:
            raise InputError(
                f"{type(self._network_module()).__name__} has no .encoder: nnUNetTrainerSimCLR needs "
                f"nnU-Net's PlainConvUNet or ResidualEncoderUNet"
            )
        return encoder

    def _do_i_compile(self) -> bool:
        # Why: only network.encoder is called, so compiling the full network's forward would not be used.
        return False

    def _build_loss(self):
        # Why: the contrastive loss replaces CE + Dice (no labels, no deep supervision).
        return NTXentLoss(self.temperature)

    def configure_optimizers(self):
        # Why: AdamW over the encoder and the projection head only (created here, the first point where the
        # encoder exists and before the optimiser); the decoder stays as initialised.
        encoder = self._encoder()
        self.projection_head = ProjectionHead(encoder.output_channels[-1], out_dim=self.projection_dim).to(self.device)
        parameters = list(encoder.parameters()) + list(self.projection_head.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def do_split(self):
        # Why: pretraining uses no labels, so every case trains whatever the fold; nothing is held out.
        if self.dataset_class is None:
            from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        keys = list(self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))
        self.print_to_log_file(
            f"SimCLR: fold {self.fold} trains on all {len(keys)} cases; validation reports "
            f"the contrastive loss on fresh augmentations of the same cases"
        )
        return keys, keys

    @staticmethod
    def get_training_transforms(
        patch_size,
        rotation_for_DA,
        deep_supervision_scales,
        mirror_axes,
        do_dummy_2d_data_aug,
        use_mask_for_norm=None,
        is_cascaded=False,
        foreground_labels=None,
        regions=None,
        ignore_label=None,
    ) -> BasicTransform:
        # Why: two independently augmented views of each patch, from nnU-Net's own (strengthened) pipeline.
        views = nnUNetTrainer.get_training_transforms(
            patch_size,
            rotation_for_DA,
            deep_supervision_scales,
            mirror_axes,
            do_dummy_2d_data_aug,
            use_mask_for_norm=use_mask_for_norm,
            is_cascaded=is_cascaded,
            foreground_labels=foreground_labels,
            regions=regions,
            ignore_label=ignore_label,
        )
        return TwoViews(strengthen_for_contrastive(views, nnUNetTrainerSimCLR.view_augmentation_probability))

    def get_validation_transforms(
        self, deep_supervision_scales, is_cascaded=False, foreground_labels=None, regions=None, ignore_label=None
    ) -> BasicTransform:
        # Why: the validation loss is the contrastive loss, which needs the same two augmented views.
        patch_size = self.configuration_manager.patch_size
        rotation, dummy_2d, _, mirror_axes = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        return self.get_training_transforms(
            patch_size,
            rotation,
            deep_supervision_scales,
            mirror_axes,
            dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            is_cascaded=is_cascaded,
            foreground_labels=foreground_labels,
            regions=regions,
            ignore_label=ignore_label,
        )

    def _views_loss(self, batch: dict) -> torch.Tensor:
        data = batch["data"].to(self.device, non_blocking=True)
        channels = self.num_input_channels
        if data.shape[1] != 2 * channels:
            raise RuntimeError(f"expected two stacked views of {channels} channels, got {data.shape[1]} channels")
        views = torch.cat([data[:, :channels], data[:, channels:]])  # both views through the encoder at once
        with training_autocast(self.device):  # only the encoder runs, so the network's own CPU bf16 is not reached
            features = self._encoder()(views)
            deepest = features[-1] if isinstance(features, (list, tuple)) else features
            assert self.projection_head is not None  # configure_optimizers made it, before training
            projections = self.projection_head(deepest)
        z1, z2 = projections.float().chunk(2)
        return self.loss(z1, z2)

    def _trained_parameters(self):
        return list(self._encoder().parameters()) + list(self.projection_head.parameters())

    def train_step(self, batch: dict) -> dict:
        # Why: two views -> encoder -> projection head -> NT-Xent; the target (labels) is ignored.
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._views_loss(batch)
        self.backward_and_step(loss, self._trained_parameters())
        return {"loss": loss.detach().cpu().numpy()}

    def on_train_epoch_start(self):
        # Why: the projection head lives outside self.network, so it is switched to training mode here too.
        super().on_train_epoch_start()
        self.projection_head.train()

    def on_validation_epoch_start(self):
        # Why: as above, for evaluation mode.
        super().on_validation_epoch_start()
        self.projection_head.eval()

    def validation_step(self, batch: dict) -> dict:
        # Why: the contrastive loss on fresh views; there is no segmentation to score.
        return {"loss": self._views_loss(batch).detach().cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs):
        # Why: log the validation contrastive loss; the pseudo Dice is NaN (no labels in play) so that the
        # logger keeps one entry per epoch for every key and nnU-Net's progress plot still draws.
        loss = float(np.mean(collate_outputs(val_outputs)["loss"]))
        self.logger.log("mean_fg_dice", float("nan"), self.current_epoch)
        self.logger.log("dice_per_class_or_region", [float("nan")], self.current_epoch)
        self.logger.log("val_losses", loss, self.current_epoch)

    def on_epoch_end(self):
        # Why: stock prints the pseudo Dice and keeps checkpoint_best by its EMA; neither exists here.
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        self.print_to_log_file("train_loss", np.round(self.logger.get_value("train_losses", step=-1), decimals=4))
        self.print_to_log_file("val_loss", np.round(self.logger.get_value("val_losses", step=-1), decimals=4))
        duration = self.logger.get_value("epoch_end_timestamps", step=-1) - self.logger.get_value(
            "epoch_start_timestamps", step=-1
        )
        self.print_to_log_file(f"Epoch time: {np.round(duration, decimals=2)} s")
        if (self.current_epoch + 1) % self.save_every == 0 and self.current_epoch != (self.num_epochs - 1):
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        if self.local_rank == 0:
            self.logger.plot_progress_png(self.output_folder)
        self.current_epoch += 1

    def save_checkpoint(self, filename: str) -> None:
        # Why: keep the projection head (for --c) beside, never inside, network_weights.
        super().save_checkpoint(filename)
        if self.local_rank == 0 and not self.disable_checkpointing and self.projection_head is not None:
            checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
            checkpoint[HEAD_KEY] = self.projection_head.state_dict()
            checkpoint["simclr"] = {"temperature": self.temperature, "projection_dim": self.projection_dim}
            torch.save(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        # Why: restore the projection head too when continuing (--c).
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        super().load_checkpoint(filename_or_checkpoint)
        if HEAD_KEY in checkpoint:
            assert self.projection_head is not None  # nnU-Net's load_checkpoint initialises the trainer first
            self.projection_head.load_state_dict(checkpoint[HEAD_KEY])

    def perform_actual_validation(self, save_probabilities: bool = False):
        # Why: no segmentation head is trained, so there is nothing to segment or score.
        self.print_to_log_file(
            "SimCLR pretraining: final validation skipped (no segmentation head is trained). "
            "Fine-tune with: nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerSimCLRFinetune "
            f"-pretrained_weights {join(self.output_folder, 'checkpoint_final.pth')}"
        )


class nnUNetTrainerSimCLRFinetune(nnUNetTrainerEnvSchedule):
    """Stock nnU-Net, for fine-tuning from a SimCLR checkpoint with ``-pretrained_weights``.

    Only the name differs from nnUNetTrainer (plus the optional AUTOSAM_* schedule): its folds get
    their own results folder instead of landing on plain nnU-Net's, so ``report`` shows both.
    """
