"""The shared logic of the SAM trainers; the public trainers (trainers.py) only pick a head.

Everything else is stock nnU-Net: preprocessing, augmentation, splits, the CE + Dice loss, the
iteration budget, sliding-window validation and prediction. What differs, and why:
- the network is a SAM encoder with a prompt-free head, built from the plans alone so that
  nnUNetv2_predict rebuilds it from the results folder;
- no deep supervision: the heads have a single output;
- AdamW at 5e-4 with nnU-Net's poly decay instead of SGD at 1e-2: the heads are transformer or
  wide convolutional decoders that start from pretrained weights (AutoSAM) or sit on a fixed
  embedding, the setting Adam-type optimizers suit; 5e-4 is the paper's learning rate. A trainable
  encoder gets a tenth of it, so fine-tuning does not wash out SAM's pretraining;
- no torch.compile: not measured to help here, and compiling a ViT costs minutes at start-up;
- no test-time mirroring (AUTOSAM_MIRROR_TTA=1 restores it): each mirror is another ViT pass;
- on a CPU whose bf16 units pay, bf16 autocast as nnU-Net autocasts to fp16 on a GPU
  (nnunet_autosam/utilities/precision.py; AUTOSAM_CPU_BF16=0 keeps fp32), for the nnU-Net baseline
  variant below as for the SAM networks;
- optionally (AUTOSAM_EMBEDDING_CACHE=cache or cache_views:K, see embedding_cache.py) training
  iterations read frozen-encoder embeddings from a cache and run only the head; validation
  iterations and the final validation stay on the fly with the full network;
- optionally (AUTOSAM_SEED) a seeded training, so that two trainings that differ in one setting (fp32
  against bf16, say) draw the same initial weights and batches, and a difference between them is that
  setting's, not the luck of the draw.
"""

import os
import random

import numpy as np
import torch
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetBaseDataset
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_autosam.experiment_planning.settings import CACHE_ENV, CacheMode, EncoderSettings, mode_from_settings
from nnunet_autosam.model.network import build_sam_network
from nnunet_autosam.training.embedding_cache.loader import CachedBatches
from nnunet_autosam.training.embedding_cache.storage import EmbeddingCache, refuse_regions
from nnunet_autosam.training.embedding_cache.views import training_view_sampler
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.precision import autocast_forward_on_cpu, describe, embedding_precision, training_autocast

SCHEDULE_VARIABLES = {
    "AUTOSAM_NUM_EPOCHS": "num_epochs",
    "AUTOSAM_ITERS_PER_EPOCH": "num_iterations_per_epoch",
    "AUTOSAM_VAL_ITERS_PER_EPOCH": "num_val_iterations_per_epoch",
    # epochs between checkpoint_latest.pth saves: what an interrupted training resumes from with nnUNetv2_train --c
    "AUTOSAM_SAVE_EVERY": "save_every",
}


MIRROR_TTA_ENV = "AUTOSAM_MIRROR_TTA"
SEED_ENV = "AUTOSAM_SEED"


class GroupwisePolyLRScheduler(PolyLRScheduler):
    """nnU-Net's poly decay applied to each parameter group's own starting rate (the encoder's is lower)."""

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        factor = (1 - current_step / self.max_steps) ** self.exponent
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def schedule_from_environment() -> dict:
    """Trainer attributes overridden by AUTOSAM_* variables, for smoke runs and demos without code edits."""
    overrides = {}
    for variable, attribute in SCHEDULE_VARIABLES.items():
        value = os.environ.get(variable)
        if value is None:
            continue
        if not value.isdigit() or int(value) < 1:
            raise InputError(f"{variable}={value!r} is not a positive whole number: set it to e.g. 5, or unset it")
        overrides[attribute] = int(value)
    return overrides


def seed_from_environment() -> int | None:
    """$AUTOSAM_SEED as a seed for Python's, NumPy's and torch's generators, or None where it is unset."""
    value = os.environ.get(SEED_ENV)
    if value is None:
        return None
    if not value.isdigit() or int(value) >= 2**32:
        raise InputError(f"{SEED_ENV}={value!r} is not a whole number below 2**32: set it to e.g. 0, or unset it")
    return int(value)


def seed_training(seed: int) -> str:
    """Seed every generator a training draws from in its own process; returns what the log should say.

    nnU-Net's augmentation workers seed themselves from the OS and hand batches over in the order they finish,
    so only the main process's draws repeat: the network's initial weights, the embedding cache's batches
    (drawn in the main process; its augmented views are seeded per slice anyway) and, with nnUNet_n_proc_DA=0,
    nnU-Net's own patches and augmentation.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    workers = os.environ.get("nnUNet_n_proc_DA")
    note = "" if workers == "0" else " (nnU-Net's augmentation workers are not: set nnUNet_n_proc_DA=0 for them too)"
    return f"seeded with {SEED_ENV}={seed}: initial weights and the main process's batches repeat{note}"


class nnUNetTrainerEnvSchedule(nnUNetTrainer):
    """Stock nnU-Net, except that the AUTOSAM_* variables can shorten its schedule or seed it and that on a CPU
    whose bf16 units pay its network runs under bf16 autocast, as stock nnU-Net runs under fp16 autocast on a GPU.

    The SAM trainers build on it; on its own it is the nnU-Net baseline of the demo and the few-label
    runner, which compare nnU-Net and the SAM heads on the same iterations and at the same precision.
    """

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for attribute, value in schedule_from_environment().items():
            setattr(self, attribute, value)
            self.print_to_log_file(f"short schedule from AUTOSAM_* variables: {attribute} = {value}")
        self.print_to_log_file(f"precision: {describe(self.device)}")
        seed = seed_from_environment()
        if seed is not None:  # before initialize() builds the network, so that its initial weights repeat too
            self.print_to_log_file(seed_training(seed))

    @staticmethod
    def build_network_architecture(
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> torch.nn.Module:
        # Why: nnU-Net's train_step and predictor autocast on CUDA only; this adds CPU bf16 to the network itself,
        # so training, validation and nnUNetv2_predict all get it (the weights and keys stay stock).
        network = nnUNetTrainer.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision
        )
        return autocast_forward_on_cpu(network)

    def backward_and_step(self, loss: torch.Tensor, parameters) -> None:
        """nnU-Net's train_step from the loss on: backward (scaled under fp16), clip the gradient norm at 12, step.

        For the steps that compute their own loss (a cached batch, SimCLR's views) so that they update as nnU-Net does.
        """
        parameters = list(parameters)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 12)
            self.optimizer.step()


class nnUNetTrainerPseudoLabelStudent(nnUNetTrainerEnvSchedule):
    """nnU-Net on the same schedule, trained on a ``pseudo-labels`` student dataset (labelled cases plus a
    teacher's labels of the unlabelled ones). It changes nothing in training: it exists so that the student's
    results folder, and its row in a report, say that it learned from unlabelled cases too."""


class SAMTrainerBase(nnUNetTrainerEnvSchedule):
    """Base for the SAM trainers. Subclasses set ``head`` and, to fine-tune the encoder, ``train_encoder``."""

    head: str = ""
    train_encoder: bool = False
    encoder_lr_factor: float = 0.1

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        patch_size = PlansManager(plans).get_configuration(configuration).patch_size
        if len(patch_size) != 2:
            raise InputError(
                f"configuration {configuration!r} is 3D, but SAM's encoders are 2D: train with configuration 2d"
            )
        super().__init__(plans, configuration, fold, dataset_json, device)
        refuse_regions(self.label_manager)
        self.enable_deep_supervision = False
        self.initial_lr = 5e-4
        settings = EncoderSettings.from_configuration(self.configuration_manager.configuration)
        self.print_to_log_file(
            f"SAM encoder {settings.encoder_type} at {settings.input_size}x{settings.input_size}, "
            f"head {self.head}, encoder {'trained' if self.train_encoder else 'frozen'}"
        )
        self.embedding_cache_mode = mode_from_settings(self.configuration_manager.configuration)
        if self.embedding_cache_mode.enabled and self.train_encoder and os.environ.get(CACHE_ENV) is None:
            # The plans' default serves the frozen-encoder trainers that share these plans; only an
            # explicit AUTOSAM_EMBEDDING_CACHE for a trained encoder is an error.
            self.print_to_log_file(
                f"the plans' embedding cache ({self.embedding_cache_mode}) is for frozen encoders; "
                f"{type(self).__name__} trains its encoder, so it runs on the fly"
            )
            self.embedding_cache_mode = CacheMode()
        if self.embedding_cache_mode.enabled:
            if self.train_encoder:
                raise InputError(
                    f"{type(self).__name__} trains the encoder, so its embeddings cannot be cached: "
                    f"set {CACHE_ENV}=off for this trainer"
                )
            if self.is_ddp:
                raise InputError(
                    f"embedding cache mode {self.embedding_cache_mode} trains on one device: run "
                    f"without -num_gpus, or set {CACHE_ENV}=off"
                )
        self.print_to_log_file(
            f"embedding cache mode: {self.embedding_cache_mode}"
            + (
                " (training iterations read cached embeddings and run only the head; validation runs the full "
                "network on the fly)"
                if self.embedding_cache_mode.enabled
                else " (encoder runs on the fly)"
            )
        )
        self._training_dataset: nnUNetBaseDataset | None = None  # -> get_tr_and_val_datasets

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> torch.nn.Module:
        # A classmethod (nnU-Net's is static): the predictor calls it on the class, and the class picks the head.
        settings = EncoderSettings.from_configuration(configuration_manager.configuration)
        return build_sam_network(
            settings, cls.head, num_input_channels, num_output_channels, train_encoder=cls.train_encoder
        )

    def get_tr_and_val_datasets(self):
        # Kept so that a cache mode knows which cases this fold trains on, without splitting twice.
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        self._training_dataset = dataset_tr
        return dataset_tr, dataset_val

    def get_dataloaders(self):
        # Cache modes replace only the training loader; the validation loader stays nnU-Net's own.
        loader_tr, loader_val = super().get_dataloaders()
        if not self.embedding_cache_mode.enabled:
            return loader_tr, loader_val
        if hasattr(loader_tr, "_finish"):
            loader_tr._finish()  # nnU-Net's augmentation workers for training are not needed
        return self._cached_training_batches(), loader_val

    def _cached_training_batches(self) -> "CachedBatches":
        mode, network = self.embedding_cache_mode, self._sam_network()
        dataset = self._training_dataset
        assert dataset is not None  # nnU-Net's get_dataloaders called get_tr_and_val_datasets
        sampler = None
        if mode.kind == "cache_views":
            sampler = training_view_sampler(
                type(self), dataset, self.configuration_manager, self.label_manager, self.oversample_foreground_percent
            )
        cache = EmbeddingCache(
            self.preprocessed_dataset_folder_base,
            network.identity,
            self.configuration_manager.data_identifier,
            self.configuration_manager.patch_size,
            mode,
            dataset,
            sampler,
            precision=embedding_precision(self.device),
        )
        cases = sorted(dataset.identifiers)
        report = cache.ensure(cases, network, self.batch_size, log=self.print_to_log_file)
        samples = cache.open(cases)
        self.print_to_log_file(
            f"embedding cache: mode {mode}, key {cache.key[:16]}, folder {cache.folder}; {len(cases)} training "
            f"cases, {len(samples) // mode.views} slices x {mode.views} view(s) = {len(samples)} cached samples; "
            f"built {len(report.built)} cases ({report.samples_built} samples) in {report.seconds:.1f} s, "
            f"reused {len(report.reused)}"
        )
        if mode.kind == "cache":
            self.print_to_log_file(
                "embedding cache: training without data augmentation (each slice padded/cropped to the patch size once)"
            )
        return CachedBatches(samples, self.batch_size, self.oversample_foreground_percent)

    def train_step(self, batch: dict) -> dict:
        # A cached batch holds embeddings, not images: run the head alone (nnU-Net's step would run the encoder).
        if "embedding" not in batch:
            return super().train_step(batch)
        embedding = batch["embedding"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        network = self._sam_network()
        self.optimizer.zero_grad(set_to_none=True)
        # nnU-Net's fp16 autocast on CUDA, as in its own train_step; bf16 on a CPU where it is on (for the loss:
        # segment() decides for the head).
        with training_autocast(self.device):
            loss = self.loss(network.segment(embedding, target.shape[-2:]), target)
        self.backward_and_step(loss, self.network.parameters())
        return {"loss": loss.detach().cpu().numpy()}

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        # Mirrors stay a training augmentation, but at inference each mirror is another full ViT pass (4 per
        # patch in 2d; measured 4.3x the prediction time, benchmarks/speed.py): off unless AUTOSAM_MIRROR_TTA=1.
        rotation, dummy_2d, initial_patch_size, mirror_axes = (
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        )
        if os.environ.get(MIRROR_TTA_ENV, "0").lower() not in ("1", "true", "t"):
            self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def _sam_network(self):
        return self.network.module if isinstance(self.network, DDP) else self.network

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """The heads have one output, so there is nothing to switch."""

    def _do_i_compile(self) -> bool:
        return False

    def configure_optimizers(self):
        network = self._sam_network()
        groups = [{"params": network.head_parameters(), "lr": self.initial_lr}]
        if self.train_encoder:
            groups.append(
                {"params": list(network.encoder.parameters()), "lr": self.initial_lr * self.encoder_lr_factor}
            )
        # fused: one kernel for all parameters instead of ~10 per tensor; the same update
        optimizer = torch.optim.AdamW(groups, lr=self.initial_lr, weight_decay=self.weight_decay, fused=True)
        return optimizer, GroupwisePolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def print_plans(self):
        super().print_plans()
        network = self._sam_network()
        trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in network.parameters() if not p.requires_grad)
        self.print_to_log_file(
            f"parameters: {trainable:,} trained, {frozen:,} frozen "
            f"({np.round(trainable / max(1, trainable + frozen) * 100, 2)}% trained)"
        )
