"""A plain (non-editable) `pip install .` ships the trainer shims and plans presets, and nnU-Net finds the trainers."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOKUP = """
import os
import nnunet_autosam
from nnunet_autosam.doctor import trainer_dir
from nnunet_autosam.plans import load_preset
os.environ["nnUNet_extTrainer"] = str(trainer_dir())
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
print("PACKAGE", nnunet_autosam.__file__)
print("TRAINER", recursive_find_trainer_class_by_name("AutoSAMTrainer").__module__)
print("PRESET", load_preset("vit_b")["input_size"])
"""


def test_plain_install_finds_trainers_and_presets(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    wheel = next((tmp_path / "wheel").glob("nnunet_autosam-*.whl"))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True)
    result = subprocess.run([str(python), "-c", LOOKUP], capture_output=True, text=True, cwd=tmp_path, check=True)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.split(" ")[0].isupper())
    assert lines["PACKAGE"].startswith(str(venv))  # the installed copy, not the checkout
    assert lines["TRAINER"] == "nnunet_autosam.trainers"
    assert lines["PRESET"] == "1024"
