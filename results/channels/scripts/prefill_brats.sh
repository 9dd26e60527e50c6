#!/bin/bash
# Prefill the BraTS separate-channel run's test tiles (fp32, as that run), commit 32f24f3, after the ACDC prefills.
until grep -q DONE prefill.log; do sleep 10; done
export PYTHONPATH=/work/exp22b
cd /work/exp22b
O=/work/runs/i22/brats_separate
until [ -f $O/prepared.json ]; do sleep 10; done
date
nnUNet_raw=$O/nnUNet_raw nnUNet_preprocessed=$O/nnUNet_preprocessed nnUNet_results=$O/nnUNet_results AUTOSAM_EMBEDDING_MEMO=$O/embedding_memo \
  /usr/bin/time -f "%e s wall, %U s user" python -m nnunet_autosam.cli prefill-memo -i $O/nnUNet_raw/Dataset750_BraTS2015Sample/imagesTs -d 750 -p nnUNetPlans_SAM_lite_medsam_256 --device cpu --batch-size 8 2>&1 | grep -v "case/s" | tail -n 3
date; echo DONE
