#!/bin/bash
# Issue 22 item 4 (ACDC, 2.5D: neighbours 27 -d 28 of the same converted ACDC); commit a7eeba0; frozen encoder in bf16.
set -e
export PYTHONPATH=/work/exp22 AUTOSAM_CPU_BF16_ENCODER=1
cd /work/exp22
A=/work/runs/i22/acdc_2d
date; nnUNet_raw=$A/nnUNet_raw nnUNet_preprocessed=$A/nnUNet_preprocessed python -m nnunet_autosam.cli compare 28 --output /work/runs/i22/acdc_2p5d --budgets 5 --seeds 1 --methods linear autosam
date; echo DONE
