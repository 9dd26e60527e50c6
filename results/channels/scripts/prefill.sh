#!/bin/bash
# Prefill the test tiles of the running ACDC comparisons (commit 32f24f3), ahead of their one-tile-at-a-time predictions.
export PYTHONPATH=/work/exp22b AUTOSAM_CPU_BF16_ENCODER=1
cd /work/exp22b
for pair in "acdc_2d 27 Dataset027_ACDC" "acdc_2p5d 28 Dataset028_ACDCNeighbours"; do
  set -- $pair
  date; echo "prefill $1"
  nnUNet_raw=/work/runs/i22/$1/nnUNet_raw nnUNet_preprocessed=/work/runs/i22/$1/nnUNet_preprocessed nnUNet_results=/work/runs/i22/$1/nnUNet_results \
  AUTOSAM_EMBEDDING_MEMO=/work/runs/i22/$1/embedding_memo /usr/bin/time -v python -m nnunet_autosam.cli prefill-memo -i /work/runs/i22/$1/nnUNet_raw/$3/imagesTs -d $2 -p nnUNetPlans_SAM_lite_medsam_256 --device cpu --batch-size 8 2>&1 | grep -v "it/s\|case/s" | tail -n 25
done
date; echo DONE
