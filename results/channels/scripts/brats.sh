#!/bin/bash
# Issue 22 item 4 (BraTS sample, 40-slice slabs): AutoSAM stacked vs separate channels vs nnU-Net; from commit a7eeba0.
set -e
export PYTHONPATH=/work/exp22
cd /work/exp22
R=/work/runs/i22/brats_raw; mkdir -p $R
[ -d $R/Dataset250_BraTS2015Sample ] || nnUNet_raw=$R python -m nnunet_autosam.cli convert-brats /work/shared/data/brats2015_sample -d 250 --slices 40
COMMON="--holdout 2 --val-patients 1 --budgets 3 --seeds 1 --encoder lite_medsam"
date; nnUNet_raw=$R python -m nnunet_autosam.cli compare 250 --output /work/runs/i22/brats_stack $COMMON --methods nnunet autosam --channels stack
date; nnUNet_raw=$R python -m nnunet_autosam.cli compare 250 --output /work/runs/i22/brats_separate $COMMON --methods autosam --channels separate
date; echo DONE
