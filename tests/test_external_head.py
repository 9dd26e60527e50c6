"""A head added from outside the package, as a user adds one: their own module in their own nnUNet_extTrainer
folder (a SegmentationHead subclass, one register_head line, a trainer subclass), trained and predicted with
the stock CLI and named in the report, without any file of this project edited."""

import os
import textwrap

import pytest
import torch

from nnunet_autosam.data.synthetic import write_synthetic_acdc
from nnunet_autosam.utilities.commands import DATASET_ID, Workspace
from nnunet_autosam.utilities.nnunet_paths import trainer_dir

pytestmark = pytest.mark.slow

SHORT_SCHEDULE = {"AUTOSAM_NUM_EPOCHS": "1", "AUTOSAM_ITERS_PER_EPOCH": "2", "AUTOSAM_VAL_ITERS_PER_EPOCH": "1"}
USER_MODULE = '''
from torch import nn

from nnunet_autosam.model.heads import HeadSpec, register_head
from nnunet_autosam.model.heads.base import SegmentationHead
from nnunet_autosam.training.trainer_base import SAMTrainerBase


class BilinearProbeHead(SegmentationHead):
    """A 1x1 convolution to the classes, upsampled 4x: the smallest head there is."""

    def __init__(self, num_classes, grid_size, dim=256):
        super().__init__(num_classes, grid_size, dim)
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)
        self.upsample = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)

    def forward(self, embedding):
        return self.upsample(self.classifier(embedding))


register_head("bilinear_probe", HeadSpec(BilinearProbeHead, "user's bilinear probe", "BilinearProbeTrainer"))


class BilinearProbeTrainer(SAMTrainerBase):
    head = "bilinear_probe"
'''


def test_a_head_from_a_users_own_folder_trains_predicts_and_is_reported(tmp_path):
    user_folder = tmp_path / "my_trainers"
    user_folder.mkdir()
    (user_folder / "my_heads.py").write_text(textwrap.dedent(USER_MODULE))
    workspace = Workspace(tmp_path / "work", SHORT_SCHEDULE, {"OMP_NUM_THREADS": "1"})
    workspace.env["nnUNet_extTrainer"] = os.pathsep.join([str(trainer_dir()), str(user_folder)])
    source = write_synthetic_acdc(tmp_path / "synthetic", num_patients=3, num_testing=1)
    plans = workspace.prepare(source, [], ["--encoder", "tiny", "--input-size", "64", "--batch-size", "2"])
    workspace.plugin("splits", DATASET_ID, "--labelled", "1", "--seeds", "1", "--val-patients", "1")

    workspace.train("BilinearProbeTrainer", 0, plans, "cpu")
    dataset = workspace.root / "nnUNet_results" / "Dataset027_ACDC"
    fold = dataset / f"BilinearProbeTrainer__{plans}__2d" / "fold_0"
    weights = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    head_keys = sorted(key for key in weights if key.startswith("head."))
    assert head_keys == ["head.classifier.bias", "head.classifier.weight"]  # the user's head, nothing else
    assert weights["head.classifier.weight"].shape == (4, 256, 1, 1)

    test_images = workspace.root / "nnUNet_raw" / "Dataset027_ACDC" / "imagesTs"
    predictions = tmp_path / "test_predictions"
    workspace.predict(
        test_images,
        predictions / f"BilinearProbeTrainer__{plans}__2d" / "fold_0",
        "BilinearProbeTrainer",
        0,
        plans,
        "cpu",
    )
    cases = sorted(path.name.replace("_0000.nii.gz", ".nii.gz") for path in test_images.glob("*_0000.nii.gz"))
    assert (
        cases
        and sorted(p.name for p in (predictions / f"BilinearProbeTrainer__{plans}__2d" / "fold_0").glob("*.nii.gz"))
        == cases
    )

    workspace.plugin("report", "-d", DATASET_ID, "--test-pred-root", str(predictions))
    report = (dataset / "autosam_report_test" / "report.md").read_text(encoding="utf-8")
    rows = [line for line in report.splitlines() if line.startswith("| user's bilinear probe")]
    assert len(rows) == 1, report
    assert rows[0].split("|")[-3].strip() == "1"  # one seed evaluated, none missing
