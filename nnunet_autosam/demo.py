"""`nnunet-autosam demo`: the main job end to end on a CPU in a few minutes, with nothing downloaded.

It runs the commands a user runs, each as a subprocess: convert-acdc, nnUNetv2_plan_and_preprocess,
plans (tiny encoder), splits, nnUNetv2_train for stock nnU-Net and every SAM trainer on each fold,
nnUNetv2_predict on the test patients, and report. Data: a small built-in synthetic cardiac-like
dataset in ACDC's layout, or a handful of real ACDC patients (``--acdc DIR``). The tiny encoder has
random weights, so the numbers show that the workflow runs, not what SAM can do.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from nnunet_autosam.doctor import trainer_dir
from nnunet_autosam.errors import InputError
from nnunet_autosam.synthetic import write_synthetic_acdc

DATASET_ID = "27"
SAM_TRAINERS = ("AutoSAMTrainer", "SAMCNNTrainer", "SAMLinearTrainer", "AutoSAMFullFTTrainer")
BASELINE_TRAINER = "nnUNetTrainerEnvSchedule"  # stock nnU-Net on the same short schedule
BANNER = ("nnunet-autosam demo: a TINY RANDOM encoder of SAM's architecture shows the workflow end to end; "
          "its scores say nothing about SAM's quality, which needs the real weights (see README).")


class Workspace:
    """nnU-Net folders under one root, and a runner for the stock and plugin commands in subprocesses."""

    def __init__(self, root, schedule: dict, extra_env=None):
        self.root = Path(root)
        self.env = dict(os.environ, nnUNet_raw=str(self.root / "nnUNet_raw"),
                        nnUNet_preprocessed=str(self.root / "nnUNet_preprocessed"),
                        nnUNet_results=str(self.root / "nnUNet_results"), nnUNet_extTrainer=str(trainer_dir()),
                        nnUNet_def_n_proc=str(min(2, os.cpu_count() or 1)), **schedule, **(extra_env or {}))
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def run(self, *command: str) -> str:
        """Run one command; return its stdout, or fail with its output's tail."""
        env = self.env
        if command[0] == "nnUNetv2_train" and "-device" in command and command[command.index("-device") + 1] == "cpu":
            env = dict(env, nnUNet_n_proc_DA="0")  # augment in the main process: worker start-up dominates on CPU
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed with exit code {result.returncode}:\n"
                               f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return result.stdout

    def plugin(self, *args: str) -> str:
        return self.run(sys.executable, "-m", "nnunet_autosam.cli", *args)

    def prepare(self, source: Path, patients, encoder_args) -> str:
        """Convert, plan and preprocess, write SAM plans; returns the plans identifier."""
        self.plugin("convert-acdc", str(source), "-d", DATASET_ID, *(["--patients", *patients] if patients else []))
        self.run("nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-np", self.env["nnUNet_def_n_proc"])
        return self.plugin("plans", DATASET_ID, *encoder_args).strip().splitlines()[-1]

    def train(self, trainer: str, fold: int, plans: str, device: str) -> None:
        self.run("nnUNetv2_train", DATASET_ID, "2d", str(fold), "-tr", trainer, "-p", plans, "-device", device)

    def predict(self, images: Path, output: Path, trainer: str, fold: int, plans: str, device: str) -> None:
        self.run("nnUNetv2_predict", "-i", str(images), "-o", str(output), "-d", DATASET_ID, "-c", "2d",
                 "-tr", trainer, "-p", plans, "-f", str(fold), "-device", device, "--disable_tta")


def acdc_patients(acdc_dir: Path, count: int) -> list:
    """``count`` training patients spread over the pathology groups (ACDC numbers them 20 per group)."""
    names = sorted(p.name for p in (acdc_dir / "training").glob("patient*") if p.is_dir())
    if len(names) < count:
        raise InputError(f"{acdc_dir}/training holds {len(names)} patients, the demo needs {count}: "
                         f"point --acdc at the ACDC folder holding training/")
    stride = max(1, len(names) // count)
    return names[::stride][:count]


def run_demo(output: Path, acdc_dir=None, num_patients: int = 6, budgets=(1, 3), epochs: int = 2,
             iterations: int = 10, input_size: int = 128, device: str = "cpu", trainers=None) -> Path:
    """Run the whole job; returns the report folder."""
    print(BANNER, flush=True)
    trainers = list(trainers or (BASELINE_TRAINER, *SAM_TRAINERS))
    schedule = {"AUTOSAM_NUM_EPOCHS": str(epochs), "AUTOSAM_ITERS_PER_EPOCH": str(iterations),
                "AUTOSAM_VAL_ITERS_PER_EPOCH": str(max(1, iterations // 5))}
    workspace = Workspace(output, schedule)
    if acdc_dir is None:
        source, patients = write_synthetic_acdc(output / "synthetic_acdc", num_patients, num_testing=2), None
    else:
        source, patients = Path(acdc_dir), acdc_patients(Path(acdc_dir), num_patients)
    val_patients = max(1, num_patients - max(budgets))
    steps = tqdm(total=3 + len(trainers) * len(budgets), desc="demo", unit="step")
    plans = workspace.prepare(source, patients, ["--encoder", "tiny", "--input-size", str(input_size)])
    steps.update(2)
    workspace.plugin("splits", DATASET_ID, "--labelled", *map(str, budgets), "--seeds", "1",
                     "--val-patients", str(val_patients))
    steps.update(1)
    test_images = workspace.root / "nnUNet_raw" / "Dataset027_ACDC" / "imagesTs"
    has_test_set = test_images.is_dir() and any(test_images.iterdir())
    for fold in range(len(budgets)):
        for trainer in trainers:
            steps.set_postfix_str(f"{trainer} fold {fold}")
            trainer_plans = "nnUNetPlans" if trainer == BASELINE_TRAINER else plans
            workspace.train(trainer, fold, trainer_plans, device)
            if has_test_set:
                workspace.predict(test_images, output / "test_predictions" / f"{trainer}__{trainer_plans}__2d"
                                  / f"fold_{fold}", trainer, fold, trainer_plans, device)
            steps.update(1)
    steps.close()
    report_args = ["report", "-d", DATASET_ID]
    if has_test_set:
        report_args += ["--test-pred-root", str(output / "test_predictions")]
    workspace.plugin(*report_args)
    report_dir = workspace.root / "nnUNet_results" / "Dataset027_ACDC" / (
        "autosam_report_test" if has_test_set else "autosam_report")
    print((report_dir / "report.md").read_text(encoding="utf-8"))
    print(f"Report: {report_dir / 'report.md'}, plot: {report_dir / 'report.png'}")
    return report_dir


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run convert -> plan -> train -> predict -> report on a small dataset, on the CPU",
        description=BANNER)
    parser.add_argument("--acdc", type=Path, help="an ACDC folder holding training/ (default: built-in synthetic data)")
    parser.add_argument("--output", type=Path, default=Path("nnunet_autosam_demo"),
                        help="working folder for nnUNet_raw/preprocessed/results (default: ./nnunet_autosam_demo)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    parser.add_argument("--patients", type=int, default=6, help="training patients (default: 6)")
    parser.add_argument("--labelled", type=int, nargs="+", default=[1, 3], help="budgets in patients (default: 1 3)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10, help="training iterations per epoch")
    parser.add_argument("--input-size", type=int, default=128, help="tiny encoder input size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trainers", nargs="+", help=f"default: {BASELINE_TRAINER} and {' '.join(SAM_TRAINERS)}")
    parser.set_defaults(func=run)


def run(args) -> None:
    if args.output.exists() and any(args.output.iterdir()):
        if not args.overwrite:
            raise InputError(f"{args.output} exists and is not empty: pass --overwrite or another --output")
        shutil.rmtree(args.output)
    if max(args.labelled) >= args.patients:
        raise InputError(f"budget {max(args.labelled)} leaves no validation patient out of {args.patients}: "
                         f"raise --patients or lower --labelled")
    run_demo(args.output.resolve(), args.acdc, args.patients, tuple(args.labelled), args.epochs, args.iters,
             args.input_size, args.device, args.trainers)
