"""nnU-Net's folder variables and dataset names, with one-line errors instead of nnU-Net's tracebacks."""

import os
from pathlib import Path

from nnunet_autosam.utilities.errors import InputError


def nnunet_folder(variable: str) -> Path:
    """The folder named by one of nnU-Net's path variables, or a one-line error saying how to set it.

    nnunetv2 2.8 wraps these in ``_EnvPath`` objects that are not strings; ``os.fspath`` is the way in.
    """
    from nnunetv2 import paths

    env_path = getattr(paths, variable)
    if not env_path.get():
        raise InputError(f"{variable} is not set: export {variable}=/path/to/{variable}")
    return Path(os.fspath(env_path))


def resolve_dataset(dataset) -> str:
    """DatasetXXX_NAME from an id or a name, as nnU-Net resolves it."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    nnunet_folder("nnUNet_raw")  # a clear line when unset, before nnU-Net looks there
    try:
        return maybe_convert_to_dataset_name(str(dataset))
    except (RuntimeError, ValueError):
        raise InputError(f"cannot find one dataset for {dataset!r} under nnUNet_raw, nnUNet_preprocessed or "
                         f"nnUNet_results: convert it first (nnunet-autosam convert-acdc) or pass the right "
                         f"id or DatasetXXX_NAME") from None


def preprocessed_folder(dataset) -> Path:
    """$nnUNet_preprocessed/DatasetXXX_NAME for an id or a name."""
    return nnunet_folder("nnUNet_preprocessed") / resolve_dataset(dataset)
