"""Does AutoSAMFullFTTrainer learn? Train it with the tiny encoder on a few ACDC patients, on the CPU,
through the stock CLI, and score nnU-Net's own validation of one patient the run never trained on.

    python benchmarks/learning_check.py [--acdc ../shared/data/acdc] [--epochs 12] [--iters 50]

Prints the validation patient's Dice per class (LV = label 3) and the wall time. The target is an
LV Dice above 0.5; with a tiny random encoder that can only come from fine-tuning it.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from nnunet_autosam.demo import Workspace, acdc_patients

TRAINER = "AutoSAMFullFTTrainer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acdc", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/acdc")
    parser.add_argument("--patients", type=int, default=7, help="patients: all but one train, one validates")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        schedule = {"AUTOSAM_NUM_EPOCHS": str(args.epochs), "AUTOSAM_ITERS_PER_EPOCH": str(args.iters),
                    "AUTOSAM_VAL_ITERS_PER_EPOCH": "5"}
        workspace = Workspace(root, schedule)
        plans = workspace.prepare(args.acdc, acdc_patients(args.acdc, args.patients),
                                  ["--encoder", "tiny", "--input-size", str(args.input_size),
                                   "--batch-size", str(args.batch_size)])
        workspace.plugin("splits", "27", "--labelled", str(args.patients - 1), "--seeds", "1", "--val-patients", "1")
        start = time.perf_counter()
        workspace.train(TRAINER, 0, plans, "cpu")
        seconds = time.perf_counter() - start
        fold = Path(root) / "nnUNet_results" / "Dataset027_ACDC" / f"{TRAINER}__{plans}__2d" / "fold_0"
        summary = json.loads((fold / "validation" / "summary.json").read_text())
        table = json.loads((Path(root) / "nnUNet_preprocessed" / "Dataset027_ACDC" / "few_label_splits.json")
                           .read_text())
    dice = {label: round(values["Dice"], 3) for label, values in summary["mean"].items()}
    iterations = args.epochs * args.iters
    print(f"{TRAINER}, tiny encoder at {args.input_size}, batch {args.batch_size}, {iterations} iterations on "
          f"{args.patients - 1} patients, validated on unseen {table['val_patients']}")
    print(f"Dice per label (1 RV, 2 Myo, 3 LV): {dice}")
    print(f"train + validation wall time: {seconds:.0f} s ({seconds / iterations:.2f} s per iteration, all in)")
    print(f"LV Dice {'above' if dice['3'] > 0.5 else 'NOT above'} 0.5")


if __name__ == "__main__":
    main()
