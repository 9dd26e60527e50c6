"""Small multi-channel nnU-Net workspaces for the channel tests: synthetic blobs, a tiny SAM file, the stock CLI."""

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from sam_files import write_sam_checkpoint

from nnunet_autosam.data.synthetic import write_synthetic_raw_dataset
from nnunet_autosam.utilities.commands import Workspace

SHORT_SCHEDULE = {"AUTOSAM_NUM_EPOCHS": "1", "AUTOSAM_ITERS_PER_EPOCH": "2", "AUTOSAM_VAL_ITERS_PER_EPOCH": "1"}
# A tiny SAM file: only a frozen encoder from a weights file has embeddings that the memo may keep.
TINY = ("--encoder", "tiny", "--input-size", "128", "--batch-size", "2", "--checkpoint", "sam_tiny_test.pth")


def channel_workspace(root, dataset_id: int, num_channels: int, preprocess: bool = True) -> Workspace:
    """Dataset ``dataset_id`` of 5 synthetic patients with ``num_channels`` channels; inputs/ holds one case."""
    workspace = Workspace(root, SHORT_SCHEDULE, {"nnUNet_SAM_weights": str(root / "weights")}, str(dataset_id))
    (root / "weights").mkdir()
    write_sam_checkpoint(root / "weights" / "sam_tiny_test.pth", "tiny")
    write_synthetic_raw_dataset(
        workspace.root / "nnUNet_raw",
        dataset_id=dataset_id,
        name=f"Channels{num_channels}",
        num_patients=5,
        cases_per_patient=1,
        num_channels=num_channels,
    )
    if preprocess:
        workspace.run("nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "2d", "-np", "1")
    inputs = workspace.root / "inputs"
    inputs.mkdir()
    for path in sorted((workspace.root / "nnUNet_raw").glob("*/imagesTr/patient01_a_*.nii.gz")):
        (inputs / path.name).symlink_to(path)
    return workspace


def predict_and_check(workspace: Workspace, trainer: str, plans: str, memo, suffix: str = "") -> Path:
    output = workspace.root / f"pred_{trainer}_{plans}{suffix}"
    workspace.env["AUTOSAM_EMBEDDING_MEMO"] = str(memo)
    workspace.predict(workspace.root / "inputs", output, trainer, 0, plans, "cpu")
    image = sitk.ReadImage(str(workspace.root / "inputs" / "patient01_a_0000.nii.gz"))
    prediction = sitk.ReadImage(str(output / "patient01_a.nii.gz"))
    assert prediction.GetSize() == image.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2, 3}
    return output
