"""Running the stock nnU-Net commands and the plugin's own in subprocesses, in one set of nnU-Net folders.

The demo, the few-label comparison, the learning check and the tests drive the project as a user does:
through the commands, each in its own process, never through in-process calls that a command-line
user would not make. nnU-Net's commands are found beside the running interpreter, so that
``.venv/bin/nnunet-autosam demo`` works without an activated venv.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from nnunet_autosam.model.heads import HEADS
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.nnunet_paths import trainer_dir

DATASET_ID = "27"  # ACDC's dataset id, as nnU-Net numbers it
STOCK_PLANS = "nnUNetPlans"
BASELINE_TRAINER = "nnUNetTrainerEnvSchedule"  # stock nnU-Net on the same short schedule
PSEUDO_LABEL_TRAINER = "nnUNetTrainerPseudoLabelStudent"  # the same, on labelled plus pseudo-labelled cases
SIMCLR_PRETRAINER = "nnUNetTrainerSimCLR"  # self-supervised, once, on every training image
SIMCLR_TRAINER = "nnUNetTrainerSimCLRFinetune"  # stock nnU-Net started from the SimCLR encoder
FULL_FT_TRAINER = "AutoSAMFullFTTrainer"  # AutoSAM with its encoder trained too
# Every SAM trainer: each registered head on a frozen encoder, then AutoSAM with its encoder trained.
SAM_TRAINERS = (*(spec.trainer for spec in HEADS.values()), FULL_FT_TRAINER)

# nnUNetv2_predict's sequential mode: each worker it would spawn re-imports nnU-Net (about 8 s on 2 cores), more
# than overlapping saves on small volumes (measured here on 2 frames: 12 s sequential, 18 s with one worker
# each, 28 s with the default three).
SEQUENTIAL_PREDICTION = ("-npp", "0", "-nps", "0")


def nnunet_command(name: str) -> str:
    """The path of nnU-Net's console script ``name``: beside this interpreter first, then on PATH.

    Why: a venv's scripts sit beside its python, and its bin/ is on PATH only while it is activated.
    """
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise InputError(
            f"{name} is neither beside {sys.executable} nor on PATH: install nnU-Net into this "
            f"environment ({sys.executable} -m pip install 'nnunetv2>=2.8.1')"
        )
    return found


def run_command(command, env=None) -> str:
    """Run one command (nnU-Net's by their bare names) with ``env`` (default: this process's); return its stdout,
    or fail with its output's tail."""
    command = list(command)
    if command[0].startswith("nnUNetv2_"):
        command = [nnunet_command(command[0]), *command[1:]]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed with exit code {result.returncode}:\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result.stdout


class Workspace:
    """nnU-Net folders under one root, and a runner for the stock and plugin commands on one dataset id."""

    def __init__(self, root, schedule: dict, extra_env=None, dataset: str = DATASET_ID):
        # One worker process each for preprocessing and export: for the demo's small cases, starting more
        # costs more than they save (measured on 2 cores: a 4-case validation 23 s with two, 13-15 s with one).
        self.root = Path(root)
        self.dataset = dataset
        self.env = {
            **os.environ,
            "nnUNet_raw": str(self.root / "nnUNet_raw"),
            "nnUNet_preprocessed": str(self.root / "nnUNet_preprocessed"),
            "nnUNet_results": str(self.root / "nnUNet_results"),
            "nnUNet_extTrainer": str(trainer_dir()),
            "nnUNet_def_n_proc": "1",
            **schedule,  # may place nnUNet_results elsewhere (the comparison keeps one per step count)
            **(extra_env or {}),
        }
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            Path(self.env[name]).mkdir(parents=True, exist_ok=True)

    def run(self, *command: str) -> str:
        """Run one command (nnU-Net's by their bare names); return its stdout, or fail with its output's tail."""
        env = self.env
        if command[0] == "nnUNetv2_train" and "-device" in command and command[command.index("-device") + 1] == "cpu":
            env = dict(env, nnUNet_n_proc_DA="0")  # augment in the main process: worker start-up dominates on CPU
        return run_command(command, env)

    def plugin(self, *args: str) -> str:
        return self.run(sys.executable, "-m", "nnunet_autosam.cli", *args)

    def prepare(self, source: Path, convert_args, encoder_args) -> str:
        """Convert ACDC (with ``convert_args``), plan and preprocess, write SAM plans; returns the plans identifier."""
        self.convert(source, convert_args)
        return self.plan(encoder_args)

    def convert(self, source: Path, convert_args) -> None:
        """ACDC's layout (``source``) -> this workspace's nnU-Net raw dataset."""
        self.plugin("convert-acdc", str(source), "-d", self.dataset, *convert_args)

    def plan(self, encoder_args) -> str:
        """nnU-Net's planning and preprocessing (2d), then SAM plans on the same data; returns their identifier."""
        self.run("nnUNetv2_plan_and_preprocess", "-d", self.dataset, "-c", "2d", "-np", self.env["nnUNet_def_n_proc"])
        return self.plugin("plans", self.dataset, *encoder_args).strip().splitlines()[-1]

    @property
    def dataset_name(self) -> str:
        """DatasetXXX_NAME of the workspace's dataset id, as it lies in the workspace's nnUNet_raw."""
        found = sorted((self.root / "nnUNet_raw").glob(f"Dataset{int(self.dataset):03d}_*"))
        if not found:
            raise InputError(f"no Dataset{int(self.dataset):03d}_* in {self.root / 'nnUNet_raw'}: prepare it first")
        return found[0].name

    def train(self, trainer: str, fold, plans: str, device: str, *options: str) -> None:
        self.run(
            "nnUNetv2_train", self.dataset, "2d", str(fold), "-tr", trainer, "-p", plans, "-device", device, *options
        )

    @property
    def simclr_checkpoint(self) -> Path:
        """Where SimCLR pretraining leaves the checkpoint that the fine-tuning folds start from."""
        return (
            Path(self.env["nnUNet_results"])
            / self.dataset_name
            / f"{SIMCLR_PRETRAINER}__{STOCK_PLANS}__2d"
            / "fold_all"
            / "checkpoint_final.pth"
        )

    def pretrain_simclr(self, device: str) -> Path:
        """SimCLR pretraining on every training image (fold ``all``); returns the checkpoint to fine-tune from."""
        self.train(SIMCLR_PRETRAINER, "all", STOCK_PLANS, device)
        return self.simclr_checkpoint

    def prefill_memo(self, images: Path, plans: str, device: str) -> None:
        """Embed the tiles of ``images`` into the embedding memo in batches, before the predictions read them."""
        self.plugin("prefill-memo", "-i", str(images), "-d", self.dataset, "-p", plans, "--device", device)

    def predict(self, images: Path, output: Path, trainer: str, fold: int, plans: str, device: str) -> None:
        self.run(
            "nnUNetv2_predict",
            "-i",
            str(images),
            "-o",
            str(output),
            "-d",
            self.dataset,
            "-c",
            "2d",
            "-tr",
            trainer,
            "-p",
            plans,
            "-f",
            str(fold),
            "-device",
            device,
            "--disable_tta",
            *SEQUENTIAL_PREDICTION,
        )
