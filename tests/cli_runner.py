"""The tests' one way to run a command as a user does: in a subprocess, nnU-Net's commands by their bare names."""

import subprocess

from nnunet_autosam.utilities.commands import nnunet_command


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
