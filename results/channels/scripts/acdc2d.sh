#!/bin/bash
# Issue 22 item 4 (ACDC, 2D): AutoSAM and linear at 5 labelled patients, seed 0; commit a7eeba0; frozen encoder in bf16.
set -e
export PYTHONPATH=/work/exp22 AUTOSAM_CPU_BF16_ENCODER=1
cd /work/exp22
date; python benchmarks/few_label_acdc.py --output /work/runs/i22/acdc_2d --budgets 5 --seeds 1 --methods linear autosam
date; echo DONE
