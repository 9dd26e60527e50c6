"""Does a SAM trainer learn from ONE labelled ACDC patient? Train through the stock CLI on the CPU and score
patients the run never saw.

    python benchmarks/learning_check.py [--encoder lite_medsam] [--trainer AutoSAMTrainer] [--epochs 12]
                                        [--iters 50] [--acdc ../shared/data/acdc] [--output DIR]

Patients are fixed before anything runs, never chosen by looking at scores: patient001 and patient011
are converted as training data (``splits --labelled 1 --val-patients 1`` makes one the labelled patient,
both frames, and the other nnU-Net's validation patient), and the 10 test patients 005, 015, ..., 095
(two per ACDC pathology group) are converted as the test set (imagesTs/labelsTs). Training reads frozen
encoder embeddings from the cache (``--embedding-cache cache``: one per slice, no augmentation), batch 8,
input 256. Test prediction is nnUNetv2_predict (no test-time mirroring) scored by
``nnunet-autosam evaluate`` (3D Dice per volume). Prints Dice per class, the mean foreground Dice, the
schedule and the wall time of each part; writes them to OUTPUT/learning_check.json.
"""

import argparse
import json
import time
from pathlib import Path

from nnunet_autosam.data.conversion import default_acdc_folder
from nnunet_autosam.evaluation.metrics import DEFAULT_SUMMARY_NAME
from nnunet_autosam.utilities.commands import DATASET_ID, Workspace

TRAINING_PATIENTS = ("patient001", "patient011")
TEST_PATIENTS = tuple(f"patient{number:03d}" for number in range(5, 100, 10))
CLASSES = {"1": "RV", "2": "MYO", "3": "LV"}


def acdc_subset(acdc: Path, folder: Path) -> Path:
    """An ACDC-layout folder linking the chosen training patients and the test patients (as testing/)."""
    for subset, patients in (("training", TRAINING_PATIENTS), ("testing", TEST_PATIENTS)):
        (folder / subset).mkdir(parents=True, exist_ok=True)
        for patient in patients:
            link = folder / subset / patient
            if not link.exists():
                link.symlink_to((acdc / "training" / patient).resolve(), target_is_directory=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acdc", type=Path, default=default_acdc_folder())
    parser.add_argument("--encoder", default="lite_medsam")
    parser.add_argument("--trainer", default="AutoSAMTrainer")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iters", type=int, default=50, help="training iterations per epoch")
    parser.add_argument("--output", type=Path, default=Path("learning_check"))
    args = parser.parse_args()

    times = {}
    start = time.perf_counter()
    schedule = {
        "AUTOSAM_NUM_EPOCHS": str(args.epochs),
        "AUTOSAM_ITERS_PER_EPOCH": str(args.iters),
        "AUTOSAM_VAL_ITERS_PER_EPOCH": "1",
    }
    root = args.output.resolve() / args.encoder
    workspace = Workspace(root, schedule)
    source = acdc_subset(args.acdc, root / "acdc_subset")
    plans = workspace.prepare(
        source,
        [],
        ["--encoder", args.encoder, "--input-size", "256", "--batch-size", "8", "--embedding-cache", "cache"],
    )
    workspace.plugin("splits", DATASET_ID, "--labelled", "1", "--seeds", "1", "--val-patients", "1")
    times["prepare_s"] = time.perf_counter() - start

    start = time.perf_counter()
    workspace.train(args.trainer, 0, plans, "cpu")
    times["train_and_validate_s"] = time.perf_counter() - start

    raw = root / "nnUNet_raw" / "Dataset027_ACDC"
    predictions = root / "test_predictions"
    start = time.perf_counter()
    workspace.predict(raw / "imagesTs", predictions, args.trainer, 0, plans, "cpu")
    times["predict_s"] = time.perf_counter() - start
    workspace.plugin("evaluate", str(predictions), str(raw / "labelsTs"), "-np", "2")
    summary = json.loads((predictions / DEFAULT_SUMMARY_NAME).read_text())
    dice = {CLASSES[label]: round(values["Dice"], 4) for label, values in summary["mean"].items()}
    splits = json.loads((root / "nnUNet_preprocessed" / "Dataset027_ACDC" / "few_label_splits.json").read_text())
    result = {
        "trainer": args.trainer,
        "encoder": args.encoder,
        "input_size": 256,
        "batch_size": 8,
        "iterations": args.epochs * args.iters,
        "epochs": args.epochs,
        "iterations_per_epoch": args.iters,
        "embedding_cache": "cache (no augmentation)",
        "labelled": splits,
        "test_patients": list(TEST_PATIENTS),
        "dice": dice,
        "mean_foreground_dice": round(sum(dice.values()) / len(dice), 4),
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }
    (root / "learning_check.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
