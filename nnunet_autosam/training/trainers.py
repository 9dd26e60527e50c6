"""The public SAM trainers, run with the stock CLI: ``nnUNetv2_train DATASET 2d FOLD -tr AutoSAMTrainer``.

Each picks a head (see nnunet_autosam/heads); trainer_base.py holds what they share. The encoder
comes from the plans (``nnunet-autosam plans``); with plain nnUNetPlans it is SAM vit_b at 1024.
"""

from nnunet_autosam.training.trainer_base import SAMTrainerBase


class AutoSAMTrainer(SAMTrainerBase):
    """Frozen SAM encoder + SAM's mask decoder without prompts, one learned token per class."""

    head = "autosam"


class SAMCNNTrainer(SAMTrainerBase):
    """Frozen SAM encoder + a convolutional decoder (~17M parameters)."""

    head = "cnn"


class SAMLinearTrainer(SAMTrainerBase):
    """Frozen SAM encoder + a linear probe (two transposed convolutions and a 1x1 convolution)."""

    head = "linear"


class AutoSAMFullFTTrainer(AutoSAMTrainer):
    """AutoSAM with the encoder fine-tuned too, at a tenth of the head's learning rate."""

    train_encoder = True
