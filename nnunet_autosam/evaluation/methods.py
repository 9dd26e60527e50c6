"""What a results folder is called in tables and plots: the method's name, and the order of the rows."""

import functools
import io
from contextlib import redirect_stdout

from nnunet_autosam.model.heads import HEADS, HeadSpec
from nnunet_autosam.utilities.commands import BASELINE_TRAINER, FULL_FT_TRAINER, PSEUDO_LABEL_TRAINER, SIMCLR_TRAINER


def _method_names() -> dict:
    """Row names in row order: nnU-Net's rows, then every registered head's trainer, AutoSAM with its encoder
    trained beside AutoSAM as in the paper's table."""
    names = {
        "nnUNetTrainer": "nnU-Net 2d",
        BASELINE_TRAINER: "nnU-Net 2d (set steps)",
        SIMCLR_TRAINER: "nnU-Net 2d + SimCLR",
        PSEUDO_LABEL_TRAINER: "nnU-Net 2d + SAM pseudo-labels (unlabelled cases too)",
    }
    for head, spec in HEADS.items():
        names[spec.trainer] = spec.display_name
        if head == "autosam":
            names[FULL_FT_TRAINER] = "AutoSAM (ft all)"
    return names


METHOD_NAMES = _method_names()
ZERO_SHOT_PREFIX = "zero-shot:"  # method key of a folder of `nnunet-autosam zero-shot` predictions
DEFAULT_PLANS = "nnUNetPlans"
DEFAULT_CONFIGURATION = "2d"


def method_display_name(folder_name: str) -> str:
    """A readable method name; plans and configuration are appended only when not the defaults."""
    if folder_name.startswith(ZERO_SHOT_PREFIX):
        return f"zero-shot SAM, oracle box prompts [{folder_name[len(ZERO_SHOT_PREFIX) :]}]"
    trainer, plans, configuration = folder_name.split("__")
    name = METHOD_NAMES.get(trainer) or str(getattr(_head_of_outside_trainer(trainer), "display_name", trainer))
    if plans != DEFAULT_PLANS:
        name += f" [{plans}]"
    if configuration != DEFAULT_CONFIGURATION:
        name += f" ({configuration})"
    return name


def method_sort_key(folder_name: str):
    """Known trainers in the paper's order, then the others alphabetically."""
    trainer = folder_name.split("__")[0]
    known = list(METHOD_NAMES)
    return (known.index(trainer) if trainer in known else len(known), folder_name)


@functools.cache
def _head_of_outside_trainer(trainer: str) -> HeadSpec | None:
    """The registered head of a trainer from outside this package (a user's, in their nnUNet_extTrainer folder).

    Such a trainer's module registers its head when imported, so the trainer is looked up as nnU-Net looks
    it up (which imports it); None where it cannot be found or names no registered head.
    """
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with redirect_stdout(io.StringIO()):  # the lookup prints every folder it searches
            trainer_class = recursive_find_trainer_class_by_name(trainer)
    except (RuntimeError, ImportError, AssertionError):
        return None
    return HEADS.get(getattr(trainer_class, "head", None))
