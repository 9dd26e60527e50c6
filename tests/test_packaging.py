"""A plain (non-editable) install ships the trainer shims and plans presets, and nnU-Net finds the trainers.

The wheel is built from a copy of the sources (nothing is written into the checkout) with pip's
default build isolation, as `pip install .` does, and installed with ``--target`` into a folder that
is put first on PYTHONPATH for the running interpreter. That interpreter keeps its own packages
(torch, nnunetv2) whether it is a venv's, conda's or a global one, while the installed copy shadows
the checkout or an editable install.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # installs the package into a fresh virtualenv

REPO = Path(__file__).resolve().parents[1]
# What setup.py reads; the rest of the checkout (tests, data, a .venv inside it) stays out of the build.
SOURCE_FILES = ("setup.py", "pyproject.toml", "setup.cfg", "MANIFEST.in", "README.md", "LICENSE")
SOURCE_FOLDERS = ("nnunet_autosam", "trainers", "plans")
LOOKUP = """
import os, sys
import nnunet_autosam
from importlib import resources
from nnunet_autosam.utilities.nnunet_paths import trainer_dir
from nnunet_autosam.experiment_planning.plans import load_preset
os.environ["nnUNet_extTrainer"] = str(trainer_dir())
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
trainer = recursive_find_trainer_class_by_name("AutoSAMTrainer")
print("PACKAGE", nnunet_autosam.__file__)
print("SHIMS", trainer_dir())
print("PRESETS", resources.files("nnunet_autosam.plan_presets"))
print("TRAINER", trainer.__module__)
print("TRAINER_FILE", sys.modules[trainer.__module__].__file__)
print("PRESET", load_preset("vit_b")["input_size"])
"""


def copy_sources(target: Path) -> Path:
    target.mkdir()
    for name in SOURCE_FILES:
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, target / name)
    for name in SOURCE_FOLDERS:
        shutil.copytree(REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def pip(*args: str, cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


def test_plain_install_finds_trainers_and_presets(tmp_path):
    sources = copy_sources(tmp_path / "src")
    site = tmp_path / "site"
    pip("wheel", "--no-deps", "-q", str(sources), "-w", str(tmp_path / "wheel"), cwd=tmp_path)
    wheel = next((tmp_path / "wheel").glob("nnunet_autosam-*.whl"))
    pip("install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel), cwd=tmp_path)

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", LOOKUP], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.split(" ")[0].isupper())
    for key in ("PACKAGE", "SHIMS", "PRESETS", "TRAINER_FILE"):
        assert lines[key].startswith(str(site)), (key, lines[key])  # the installed copy, not the checkout
    assert lines["TRAINER"] == "nnunet_autosam.training.trainers"
    assert lines["PRESET"] == "1024"
