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
- no torch.compile: not measured to help here, and compiling a ViT costs minutes at start-up.
"""

import os

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_autosam.errors import InputError
from nnunet_autosam.network import EncoderSettings, build_sam_network

SCHEDULE_VARIABLES = {
    "AUTOSAM_NUM_EPOCHS": "num_epochs",
    "AUTOSAM_ITERS_PER_EPOCH": "num_iterations_per_epoch",
    "AUTOSAM_VAL_ITERS_PER_EPOCH": "num_val_iterations_per_epoch",
}


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


class nnUNetTrainerEnvSchedule(nnUNetTrainer):
    """Stock nnU-Net, except that the AUTOSAM_* variables can shorten its schedule.

    The SAM trainers build on it; on its own it is the nnU-Net baseline for demos and smoke runs that
    compare nnU-Net and the SAM heads on the same number of iterations.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for attribute, value in schedule_from_environment().items():
            setattr(self, attribute, value)
            self.print_to_log_file(f"short schedule from AUTOSAM_* variables: {attribute} = {value}")


class SAMTrainerBase(nnUNetTrainerEnvSchedule):
    """Base for the SAM trainers. Subclasses set ``head`` and, to fine-tune the encoder, ``train_encoder``."""

    head: str = ""
    train_encoder: bool = False
    encoder_lr_factor: float = 0.1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        patch_size = PlansManager(plans).get_configuration(configuration).patch_size
        if len(patch_size) != 2:
            raise InputError(f"configuration {configuration!r} is 3D, but SAM's encoders are 2D: "
                             f"train with configuration 2d")
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.initial_lr = 5e-4
        settings = EncoderSettings.from_configuration(self.configuration_manager.configuration)
        self.print_to_log_file(f"SAM encoder {settings.encoder_type} at {settings.input_size}x{settings.input_size}, "
                               f"head {self.head}, encoder {'trained' if self.train_encoder else 'frozen'}")

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> torch.nn.Module:
        # A classmethod (nnU-Net's is static): the predictor calls it on the class, and the class picks the head.
        settings = EncoderSettings.from_configuration(configuration_manager.configuration)
        return build_sam_network(settings, cls.head, num_input_channels, num_output_channels,
                                 train_encoder=cls.train_encoder)

    def _sam_network(self):
        return self.network.module if isinstance(self.network, DDP) else self.network

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """The heads have one output, so there is nothing to switch."""

    def _do_i_compile(self) -> bool:
        return False

    def configure_optimizers(self):
        network = self._sam_network()
        groups = [{"params": [p for p in network.head.parameters() if p.requires_grad], "lr": self.initial_lr}]
        if self.train_encoder:
            groups.append({"params": list(network.encoder.parameters()),
                           "lr": self.initial_lr * self.encoder_lr_factor})
        optimizer = torch.optim.AdamW(groups, lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, GroupwisePolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def print_plans(self):
        super().print_plans()
        network = self._sam_network()
        trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in network.parameters() if not p.requires_grad)
        self.print_to_log_file(f"parameters: {trainable:,} trained, {frozen:,} frozen "
                               f"({np.round(trainable / max(1, trainable + frozen) * 100, 2)}% trained)")
