"""convert-brats on the BraTS 2015 sample (skipped where it is absent), and its refusals on a fake source."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

from nnunet_autosam import cli
from nnunet_autosam.data.brats import CHANNEL_FILES, LABEL_FILE, MASK_FILE, TRAINING_FOLDER, convert_brats
from nnunet_autosam.data.verify import verify_dataset
from nnunet_autosam.model.channel_input import DEFAULT_MULTI_CHANNEL
from nnunet_autosam.utilities.commands import Workspace
from nnunet_autosam.utilities.errors import InputError

CASES = [f"pat{n:04d}" for n in range(1, 7)]


def test_the_sample_converts_into_a_verified_two_channel_dataset(brats_dir, nnunet_env):
    target = convert_brats(brats_dir, 15)
    assert target == nnunet_env["nnUNet_raw"] / "Dataset015_BraTS2015Sample"
    dataset = json.loads((target / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "FLAIR", "1": "T1c"}
    assert dataset["labels"] == {
        "background": 0,
        "necrosis": 1,
        "edema": 2,
        "non-enhancing tumor": 3,
        "enhancing tumor": 4,
    }
    assert dataset["numTraining"] == 6 and dataset["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == [
        f"{case}_{channel:04d}.nii.gz" for case in CASES for channel in (0, 1)
    ]
    assert sorted(p.name for p in (target / "labelsTr").iterdir()) == [f"{case}.nii.gz" for case in CASES]
    for case in CASES:
        label = sitk.ReadImage(str(target / "labelsTr" / f"{case}.nii.gz"))
        assert label.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayViewFromImage(label))) <= set(range(5))
        channels = [sitk.ReadImage(str(target / "imagesTr" / f"{case}_{c:04d}.nii.gz")) for c in (0, 1)]
        for other in (channels[1], label):
            for what in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
                assert getattr(other, what)() == getattr(channels[0], what)(), (case, what)
    assert verify_dataset(target) == ([], 18)

    # 0 outside the brain: nnU-Net's crop to the nonzero region then shrinks the case below 3/4 of its
    # volume, the rule by which its planner z-scores inside the mask (use_mask_for_norm).
    source = next((brats_dir / TRAINING_FOLDER).glob("*/brats_2013_pat0001_1"))
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(source / MASK_FILE))) > 0
    volume = np.stack(
        [sitk.GetArrayFromImage(sitk.ReadImage(str(target / "imagesTr" / f"pat0001_{c:04d}.nii.gz"))) for c in (0, 1)]
    )
    assert (volume[:, ~brain] == 0).all()
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(source / CHANNEL_FILES[1])))
    assert np.array_equal(volume[1][brain], original[brain])
    cropped, _, _ = crop_to_nonzero(volume[:1])
    assert cropped.size < 0.75 * volume[:1].size


def write_fake_case(root, subset="train", name="brats_2013_pat0007_1", label_values=(0, 1, 4)):
    """A 4 x 6 x 5 case with every file of the sample's layout."""
    folder = root / TRAINING_FOLDER / subset / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label = rng.choice(label_values, size=(4, 6, 5)).astype(np.float32)
    arrays = {CHANNEL_FILES[0]: rng.normal(size=label.shape), CHANNEL_FILES[1]: rng.normal(size=label.shape)}
    arrays.update({LABEL_FILE: label, MASK_FILE: np.ones(label.shape)})
    for file, array in arrays.items():
        sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.float32)), str(folder / file), True)
    return folder


def test_bad_sources_and_targets_are_refused_in_one_line(nnunet_env, tmp_path):
    def refused(match, source, dataset_id=15):
        with pytest.raises(InputError, match=match):
            convert_brats(source, dataset_id)

    refused(f"has no {TRAINING_FOLDER}/ folder: pass the folder that holds", tmp_path)
    (tmp_path / TRAINING_FOLDER / "train").mkdir(parents=True)
    refused("holds no brats_2013_patNNNN_1 case folders", tmp_path)
    folder = write_fake_case(tmp_path)
    (folder / MASK_FILE).unlink()
    refused(f"brats_2013_pat0007_1 has no {MASK_FILE}: the BraTS folder is incomplete", tmp_path)
    folder = write_fake_case(tmp_path, "test", "brats_2013_pat0008_1", label_values=(0, 5))
    (tmp_path / TRAINING_FOLDER / "train" / "brats_2013_pat0007_1" / MASK_FILE).write_bytes(
        (folder / MASK_FILE).read_bytes()
    )
    refused(r"OTMultiClass.nii.gz has label values \[5.0\] outside \[0, 1, 2, 3, 4\]", tmp_path)
    assert not list(nnunet_env["nnUNet_raw"].iterdir())  # nothing left behind
    write_fake_case(tmp_path, "validation", "brats_2013_pat0008_2")
    refused("pat0008 is in two folders", tmp_path)

    good = tmp_path / "good"
    write_fake_case(good)
    assert cli.main(["convert-brats", str(good), "-d", "15"]) == 0
    refused("Dataset015_BraTS2015Sample already exists: pass --overwrite", good)
    assert convert_brats(good, 15, overwrite=True).name == "Dataset015_BraTS2015Sample"


@pytest.mark.slow
def test_the_sample_trains_predicts_and_is_evaluated_through_the_stock_cli_with_lite_medsam(brats_dir, tmp_path):
    """LiteMedSAM on both MRI channels (the default strategy), from the cache, on 3-slice slabs: plumbing only."""

    schedule = {"AUTOSAM_NUM_EPOCHS": "1", "AUTOSAM_ITERS_PER_EPOCH": "2", "AUTOSAM_VAL_ITERS_PER_EPOCH": "1"}
    workspace = Workspace(tmp_path, schedule, {"AUTOSAM_EMBEDDING_MEMO": str(tmp_path / "memo")}, "250")
    workspace.plugin("convert-brats", str(brats_dir), "-d", "250", "--slices", "3")
    plans = workspace.plan(["--encoder", "lite_medsam", "--embedding-cache", "cache", "--batch-size", "2"])
    workspace.plugin("splits", "250", "--labelled", "3", "--seeds", "1", "--val-patients", "1")
    train = workspace.root / "nnUNet_results" / workspace.dataset_name / f"AutoSAMTrainer__{plans}__2d" / "fold_0"
    workspace.train("AutoSAMTrainer", 0, plans, "cpu")
    weights = torch.load(train / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert weights["_extra_state"]["channels"] == f"{DEFAULT_MULTI_CHANNEL}:2"  # FLAIR and T1c, the default way
    validation = json.loads((train / "validation" / "summary.json").read_text())
    assert validation["foreground_mean"]["Dice"] == validation["foreground_mean"]["Dice"]  # scored, not NaN

    splits = json.loads(
        (workspace.root / "nnUNet_preprocessed" / workspace.dataset_name / "splits_final.json").read_text()
    )
    held_out = sorted(set(CASES) - set(splits[0]["train"]) - set(splits[0]["val"]))
    raw = workspace.root / "nnUNet_raw" / workspace.dataset_name
    images, references = tmp_path / "test_images", tmp_path / "test_labels"
    images.mkdir(), references.mkdir()
    for case in held_out:
        for channel in (0, 1):
            (images / f"{case}_{channel:04d}.nii.gz").symlink_to(raw / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
        (references / f"{case}.nii.gz").symlink_to(raw / "labelsTr" / f"{case}.nii.gz")
    predictions = tmp_path / "predictions"
    workspace.predict(images, predictions, "AutoSAMTrainer", 0, plans, "cpu")
    workspace.plugin("evaluate", str(predictions), str(references))
    summary = json.loads((predictions / "summary_evaluate.json").read_text())
    assert sorted(summary["mean"]) == ["1", "2", "3", "4"]  # every tumour class scored on the held-out cases
    assert len(summary["metric_per_case"]) == len(held_out) == 2


def test_slices_keep_a_slab_centred_on_each_tumour(brats_dir, nnunet_env):
    full, slab = convert_brats(brats_dir, 15), convert_brats(brats_dir, 16, slices=5)
    for case in CASES:
        whole = sitk.ReadImage(str(full / "labelsTr" / f"{case}.nii.gz"))
        kept = sitk.ReadImage(str(slab / "labelsTr" / f"{case}.nii.gz"))
        assert kept.GetSize() == (*whole.GetSize()[:2], 5)
        z = np.nonzero(sitk.GetArrayViewFromImage(whole))[0]
        start = int(round(z.mean())) - 2  # the slab's first slice: 2 below the tumour's mean z
        assert np.allclose(kept.GetOrigin(), whole.TransformIndexToPhysicalPoint((0, 0, start)))  # geometry follows
        assert np.array_equal(sitk.GetArrayViewFromImage(kept), sitk.GetArrayViewFromImage(whole)[start : start + 5])
    with pytest.raises(InputError, match="--slices 0 keeps no slice"):
        convert_brats(brats_dir, 17, slices=0)
