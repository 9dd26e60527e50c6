"""nnU-Net's folder variables and dataset names, with one-line errors instead of nnU-Net's tracebacks."""

import os
import re
from importlib import resources
from pathlib import Path

from nnunet_autosam.utilities.errors import InputError

RAW_IMAGE_NAME = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})")  # nnU-Net raw naming: CASE_XXXX, XXXX the channel


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
        raise InputError(
            f"cannot find one dataset for {dataset!r} under nnUNet_raw, nnUNet_preprocessed or "
            f"nnUNet_results: convert it first (nnunet-autosam convert-acdc) or pass the right "
            f"id or DatasetXXX_NAME"
        ) from None


def preprocessed_folder(dataset) -> Path:
    """$nnUNet_preprocessed/DatasetXXX_NAME for an id or a name."""
    return nnunet_folder("nnUNet_preprocessed") / resolve_dataset(dataset)


def trainer_dir() -> Path:
    """The repository's trainers/ folder: a source checkout's own when the package runs from one, else the
    installed copy.

    A checkout on PYTHONPATH (as tests/mutants.py runs a copy) may have no installed ext_trainers package, or one
    that an editable install maps onto another checkout's trainers/.
    """
    checkout = source_checkout()
    if checkout is not None and (checkout / "trainers").is_dir():
        return checkout / "trainers"
    return Path(str(resources.files("nnunet_autosam.ext_trainers")))


def source_checkout():
    """The repository the package runs from (a Path), or None for an installed copy."""
    checkout = Path(__file__).resolve().parents[2]
    return checkout if (checkout / "setup.py").is_file() else None
