"""Found by nnU-Net through nnUNet_extTrainer, which imports this folder's modules as top-level modules.

The classes live in the installed package; this module only makes it visible to that lookup, so that
``nnUNetv2_train DATASET 2d all -tr nnUNetTrainerSimCLR`` and the fine-tuning trainer work.
"""

from nnunet_autosam.training.simclr import nnUNetTrainerSimCLR, nnUNetTrainerSimCLRFinetune

__all__ = ["nnUNetTrainerSimCLR", "nnUNetTrainerSimCLRFinetune"]
