"""Found by nnU-Net through nnUNet_extTrainer, which imports this folder's modules as top-level modules.

The classes live in the installed package; this module only makes them visible to that lookup.
"""

from nnunet_autosam.training.trainer_base import nnUNetTrainerEnvSchedule, nnUNetTrainerPseudoLabelStudent
from nnunet_autosam.training.trainers import AutoSAMFullFTTrainer, AutoSAMTrainer, SAMCNNTrainer, SAMLinearTrainer

__all__ = [
    "AutoSAMTrainer",
    "SAMCNNTrainer",
    "SAMLinearTrainer",
    "AutoSAMFullFTTrainer",
    "nnUNetTrainerEnvSchedule",
    "nnUNetTrainerPseudoLabelStudent",
]
