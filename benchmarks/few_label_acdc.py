"""The published few-label ACDC experiment (results/acdc_lite_medsam): ``convert-acdc --holdout 20`` into the
output folder, then ``nnunet-autosam compare 27`` with the protocol's defaults, the bar this experiment sets
for AutoSAM at one labelled patient (39, below the paper's 39.3 for ViT-B), and three choices fixed before
anything trained: 6 validation patients (12 volumes; 2 would be too few to tell 2 points of Dice apart), and
the CNN head and ft-all capped at 500 steps (about 8 and 10 s a step on 2 cores: their climb beyond 500 and
three seeds of it would not fit the day of CPU the whole table is given). nnU-Net's ladder starts at 4000 steps:
an earlier run of this experiment (from 24d2196, on validation alone, its records lost with its machine) took
nnU-Net at 1 labelled patient from 26.2 mean Dice at 250 steps to 37.3, 45.5, 50.5 and 56.3 at 4000, more
than the plateau's 2 points at every doubling, so its lower rungs would only spend 1.3 hours again. The
pseudo-label student is that nnU-Net trained on more patients, so it starts at 4000 steps too: its variant is
chosen there, not at rungs nnU-Net on fewer patients had not yet learned at. Every record of this experiment
trained under CPU bf16 autocast, the rule before the speed probe (on wherever the CPU has bf16 instructions), on
three CPUs; the script keeps that rule (``AUTOSAM_CPU_BF16=1`` on such a CPU, unless the caller set it), so that
no machine's probe changes a row's precision part-way. AutoSAM's head trains in fp32 on the CPU in either
setting (its bf16 training scored lower, docs/cpu_precision.md), so AutoSAM's records trained with its head in
bf16 were set aside (results/acdc_lite_medsam/rerun_state/README.md) and its lines train again.

    python benchmarks/few_label_acdc.py --output runs/acdc_lite_medsam               # every run, resumable
    python benchmarks/few_label_acdc.py --output runs/acdc_lite_medsam --shard 0/4   # compare's options
    python benchmarks/few_label_acdc.py --output runs/acdc_lite_medsam --publish results/acdc_lite_medsam
"""

import argparse
import os
from pathlib import Path

from nnunet_autosam.cli import build_parser
from nnunet_autosam.comparison.provenance import LoggedWorkspace
from nnunet_autosam.data.conversion import default_acdc_folder
from nnunet_autosam.utilities.locks import exclusive
from nnunet_autosam.utilities.precision import CPU_BF16_ENV, cpu_has_bf16

CLAIM_MIN_DICE = "39"
# compare's options given later win
FIXED_CHOICES = ["--val-patients", "6", "--cap", "cnn=500", "ftall=500", "--start", "nnunet=4000", "pseudo=4000"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--acdc", type=Path, default=default_acdc_folder(), help="ACDC folder holding training/")
    parser.add_argument("--holdout", type=int, default=20, help="held-out test patients (default: 20)")
    parser.add_argument("--output", type=Path, required=True, help="working folder, as compare's --output")
    args, compare_args = parser.parse_known_args(argv)
    output = args.output.resolve()
    if cpu_has_bf16():
        os.environ.setdefault(CPU_BF16_ENV, "1")  # inherited by every training and prediction it runs
    with exclusive(output / "prepare.lock"):
        if not (output / "nnUNet_raw" / "Dataset027_ACDC" / "dataset.json").is_file():
            convert = ["-d", "27", "--overwrite", "--holdout", str(args.holdout)]
            LoggedWorkspace(output, {}).plugin("convert-acdc", str(args.acdc.resolve()), *convert)
    compare = ["compare", "27", "--output", str(output), "--claim-min-dice", CLAIM_MIN_DICE, *FIXED_CHOICES]
    compare += compare_args
    parsed = build_parser().parse_args(compare)
    parsed.func(parsed)


if __name__ == "__main__":
    main()
