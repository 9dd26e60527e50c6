from pathlib import Path

import pytest

from nnunet_autosam.data.conversion import default_acdc_folder


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
def nnunet_env(tmp_path, monkeypatch):
    """Fresh nnUNet_raw/preprocessed/results folders under tmp_path, set in the environment."""
    env = {}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.setenv(name, str(folder))
        env[name] = folder
    return env
