"""Prompt-free heads on SAM's image embedding, and the one table of them.

Each head is one module with one ``SegmentationHead`` subclass; ``HEADS`` maps its name (the value a
trainer's ``head`` attribute names) to the class, the name reports show, and the trainer that trains
it with a frozen encoder. Adding a head is one module and one ``register_head`` call: in this file
for the project's heads, in the user's own module (beside their trainer, in their nnUNet_extTrainer
folder) for theirs. Everything else (network, report, demo, the few-label runner, benchmarks, tests)
iterates over ``HEADS``.
"""

from dataclasses import dataclass

from nnunet_autosam.model.heads.autosam import AutoSAMHead
from nnunet_autosam.model.heads.base import SegmentationHead
from nnunet_autosam.model.heads.cnn import CNNHead
from nnunet_autosam.model.heads.linear import LinearHead
from nnunet_autosam.utilities.errors import InputError


@dataclass(frozen=True)
class HeadSpec:
    head_class: type  # a SegmentationHead subclass
    display_name: str  # the method's name in reports and tables
    trainer: str  # the nnU-Net trainer class that trains it on a frozen encoder


HEADS: dict = {}


def register_head(name: str, spec: HeadSpec) -> HeadSpec:
    """Add a head under ``name``; another head class under a name already taken is refused.

    The same class registered again (nnU-Net's trainer lookup imports an nnUNet_extTrainer module afresh
    at each search) replaces the earlier entry.
    """
    if not (isinstance(spec.head_class, type) and issubclass(spec.head_class, SegmentationHead)):
        raise TypeError(f"head {name!r}: {spec.head_class!r} is not a SegmentationHead subclass")
    if name in HEADS and _qualified_name(HEADS[name].head_class) != _qualified_name(spec.head_class):
        raise ValueError(f"head name {name!r} is taken by {_qualified_name(HEADS[name].head_class)}")
    HEADS[name] = spec
    return spec


def _qualified_name(head_class: type) -> str:
    return f"{head_class.__module__}.{head_class.__qualname__}"


def head_spec(name: str) -> HeadSpec:
    if name not in HEADS:
        raise InputError(
            f"unknown head {name!r}: use one of {', '.join(HEADS)}, or register yours with "
            f"nnunet_autosam.model.heads.register_head"
        )
    return HEADS[name]


register_head("autosam", HeadSpec(AutoSAMHead, "AutoSAM", "AutoSAMTrainer"))
register_head("cnn", HeadSpec(CNNHead, "SAM encoder + CNN", "SAMCNNTrainer"))
register_head("linear", HeadSpec(LinearHead, "SAM encoder + linear", "SAMLinearTrainer"))
