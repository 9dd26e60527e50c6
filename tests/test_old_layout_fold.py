"""A fold saved by the flat, pre-regrouping package still predicts: nnU-Net finds trainers by class name."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_autosam.utilities.commands import SEQUENTIAL_PREDICTION, Workspace

FIXTURE = Path(__file__).parent / "fixtures" / "old_layout_fold"
PLANS = "nnUNetPlans_SAM_tiny_64"

pytestmark = pytest.mark.slow


def test_a_fold_written_by_the_old_layout_predicts_what_it_predicted_then(tmp_path):
    workspace = Workspace(tmp_path, {}, {"AUTOSAM_CPU_BF16": "0", "OMP_NUM_THREADS": "1"})
    shutil.copytree(FIXTURE / "results", tmp_path / "nnUNet_results", dirs_exist_ok=True)
    output = tmp_path / "prediction"
    workspace.run(
        "nnUNetv2_predict",
        "-i",
        str(FIXTURE / "input"),
        "-o",
        str(output),
        "-d",
        "27",
        "-c",
        "2d",
        "-tr",
        "SAMLinearTrainer",
        "-p",
        PLANS,
        "-f",
        "0",
        "-device",
        "cpu",
        "--disable_tta",
        *SEQUENTIAL_PREDICTION,
    )
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(output / "case.nii.gz")))
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURE / "expected_case.nii.gz")))
    assert predicted.shape == expected.shape
    assert set(np.unique(expected)) == {0, 1, 2, 3}  # the fold segments something: the comparison means something
    # fp32 on the same CPU gives the same labels; another CPU's kernels may flip a voxel at a class border.
    agreement = float((predicted == expected).mean())
    assert agreement >= 0.999, f"only {agreement:.4%} of voxels agree with the old layout's prediction"
    assert not os.listdir(tmp_path / "nnUNet_raw")  # nothing but the results folder was needed
