"""The tests' one way to run a command as a user does: in a subprocess, nnU-Net's commands by their bare names."""

import os
import subprocess
import sys

from nnunet_autosam.utilities.commands import nnunet_command
from nnunet_autosam.utilities.nnunet_paths import trainer_dir

# One epoch of three training iterations and one validation iteration: the plumbing, in seconds.
SHORT_SCHEDULE = {"AUTOSAM_NUM_EPOCHS": "1", "AUTOSAM_ITERS_PER_EPOCH": "3", "AUTOSAM_VAL_ITERS_PER_EPOCH": "1"}


def cli(*args) -> list:
    """The plugin's command line, run by this interpreter (so an un-activated venv works)."""
    return [sys.executable, "-m", "nnunet_autosam.cli", *args]


def nnunet_env(root, **extra) -> dict:
    """This process's environment with nnU-Net's raw, preprocessed and results folders made under ``root``,
    the plugin's trainers findable, one worker per nnU-Net pool and the short schedule; ``extra`` on top."""
    env = dict(
        os.environ,
        nnUNet_raw=str(root / "raw"),
        nnUNet_preprocessed=str(root / "preprocessed"),
        nnUNet_results=str(root / "results"),
        nnUNet_extTrainer=str(trainer_dir()),
        nnUNet_def_n_proc="1",
        **SHORT_SCHEDULE,
        **extra,
    )
    for name in ("raw", "preprocessed", "results"):
        (root / name).mkdir()
    return env


def run(command, env, check=True, timeout=None) -> subprocess.CompletedProcess:
    """Run ``command`` with ``env``; with ``check``, fail the test with the output's tail on a non-zero exit.

    Differs from ``Workspace.run`` in what a test needs: the whole result (a test reads stderr and the exit
    code of a refused command) and an assertion rather than an exception to report.
    """
    command = list(command)
    if command[0] == "nnUNetv2_train":
        env = dict(env, nnUNet_n_proc_DA="0")  # augment in the main process: no worker start-up on 2 cores
    if command[0].startswith("nnUNetv2_"):
        command = [nnunet_command(command[0]), *command[1:]]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result
