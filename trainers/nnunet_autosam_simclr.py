"""Found by nnU-Net through nnUNet_extTrainer, which imports this folder's modules as top-level modules.

The class lives in the installed package; this module only makes it visible to that lookup, so that
``nnUNetv2_train DATASET 2d all -tr nnUNetTrainerSimCLR`` works.
"""

from nnunet_autosam.simclr import nnUNetTrainerSimCLR

__all__ = ["nnUNetTrainerSimCLR"]
