"""Four channels, a 2.5D dataset of `nnunet-autosam neighbours`, and region labels, through the stock CLI.

Synthetic datasets and the `tiny` encoder: plumbing, not quality.
"""

import json

import pytest
import SimpleITK as sitk
import torch
from channel_workspaces import SHORT_SCHEDULE, TINY, channel_workspace, predict_and_check

from nnunet_autosam.data.synthetic import write_synthetic_raw_dataset
from nnunet_autosam.utilities.commands import Workspace

pytestmark = pytest.mark.slow  # nnU-Net's CLI in subprocesses


def test_four_channels_default_to_separate_passes_and_stack_is_refused_in_one_line(tmp_path):
    workspace = channel_workspace(tmp_path, 412, 4)
    with pytest.raises(RuntimeError) as refused:
        workspace.plugin("plans", "412", *TINY, "--channels", "stack")
    last_line = str(refused.value).strip().splitlines()[-1]
    assert "stack feeds at most 3 channels" in last_line and "--channels separate" in last_line
    assert not list((workspace.root / "nnUNet_preprocessed").glob("*/nnUNetPlans_SAM_tiny_128.json"))

    plans = workspace.plugin("plans", "412", *TINY).strip().splitlines()[-1]
    workspace.train("SAMCNNTrainer", 0, plans, "cpu")  # encoder on the fly
    fold = workspace.root / "nnUNet_results" / workspace.dataset_name / f"SAMCNNTrainer__{plans}__2d" / "fold_0"
    weights = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert weights["_extra_state"]["channels"] == "separate:4"
    assert weights["fusion.conv.weight"].shape == (256, 4 * 256, 1, 1)  # the fusion trains and travels with the head
    predict_and_check(workspace, "SAMCNNTrainer", plans, workspace.root / "memo")


def test_a_neighbours_dataset_trains_on_stacked_slices_and_predicts_shifted_images(tmp_path):
    workspace = channel_workspace(tmp_path, 413, 1, preprocess=False)
    workspace.plugin("neighbours", "413", "-d", "414")
    workspace.dataset = "414"
    workspace.run("nnUNetv2_plan_and_preprocess", "-d", "414", "-c", "2d", "-np", "1")
    plans = workspace.plugin("plans", "414", *TINY).strip().splitlines()[-1]
    planned = json.loads(
        (workspace.root / "nnUNet_preprocessed" / workspace.dataset_name / f"{plans}.json").read_text()
    )
    encoder = planned["configurations"]["2d"]["sam_encoder"]
    assert (encoder["channels"], encoder["num_channels"]) == ("stack", 3)  # one pass: the slices as R, G, B

    workspace.train("SAMLinearTrainer", 0, plans, "cpu")
    shifted = tmp_path / "inputs_2p5d"
    workspace.plugin("neighbours", "413", "--images", str(tmp_path / "inputs"), "--output", str(shifted))
    output = tmp_path / "pred_2p5d"
    workspace.predict(shifted, output, "SAMLinearTrainer", 0, plans, "cpu")
    image = sitk.ReadImage(str(tmp_path / "inputs" / "patient01_a_0000.nii.gz"))
    assert sitk.ReadImage(str(output / "patient01_a.nii.gz")).GetSize() == image.GetSize()


def test_region_based_labels_are_refused_by_the_sam_trainers_in_one_line(tmp_path):
    workspace = Workspace(tmp_path, SHORT_SCHEDULE, dataset="415")
    source = write_synthetic_raw_dataset(
        workspace.root / "nnUNet_raw", dataset_id=415, num_patients=5, cases_per_patient=1
    )
    description = json.loads((source / "dataset.json").read_text())
    description.update(labels={"background": 0, "all_blobs": [1, 2, 3], "blob3": 3}, regions_class_order=[1, 3])
    (source / "dataset.json").write_text(json.dumps(description))
    plans = workspace.plan(["--encoder", "tiny", "--input-size", "128", "--batch-size", "2"])
    with pytest.raises(RuntimeError) as refused:
        workspace.train("SAMLinearTrainer", 0, plans, "cpu")
    last_line = str(refused.value).strip().splitlines()[-1]
    assert "region-based labels" in last_line and "-tr nnUNetTrainer" in last_line
