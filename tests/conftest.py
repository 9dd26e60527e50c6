import os
import tempfile
from pathlib import Path

import pytest

from nnunet_autosam.data.brats import TRAINING_FOLDER, default_brats_folder
from nnunet_autosam.data.conversion import default_acdc_folder
from nnunet_autosam.utilities.precision import PROBE_FILE_ENV

# The CPU bf16 probe keeps its ratio in a file: here one per test process (and the commands it runs), in a
# temporary folder, not the user's cache.
os.environ.setdefault(PROBE_FILE_ENV, str(Path(tempfile.mkdtemp(prefix="autosam_probe_")) / "cpu_bf16_probe.json"))


def acdc_root() -> Path:
    """The ACDC folder (holding training/), from $NNUNET_AUTOSAM_ACDC or ../shared/data/acdc."""
    return default_acdc_folder()


@pytest.fixture
def acdc_dir() -> Path:
    root = acdc_root()
    if not (root / "training").is_dir():
        pytest.skip(f"ACDC data not found at {root} (set NNUNET_AUTOSAM_ACDC to the folder holding training/)")
    return root


@pytest.fixture
def brats_dir() -> Path:
    root = default_brats_folder()
    if not (root / TRAINING_FOLDER).is_dir():
        pytest.skip(
            f"BraTS 2015 sample not found at {root} (set NNUNET_AUTOSAM_BRATS to the folder holding {TRAINING_FOLDER}/)"
        )
    return root


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """Fresh nnUNet_raw/preprocessed/results folders under tmp_path, set in the environment."""
    env = {}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.setenv(name, str(folder))
        env[name] = folder
    return env
