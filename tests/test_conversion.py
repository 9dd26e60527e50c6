"""convert-acdc on a handful of real ACDC patients, and on damaged copies of them."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_autosam.data.conversion import convert_acdc, itk_warnings_off
from nnunet_autosam.utilities.errors import InputError

PATIENTS = ["patient001", "patient002", "patient021", "patient041"]


def copy_patients(acdc_dir, destination, patients, subset="training"):
    """A private ACDC folder with copies of ``patients`` that a test may damage."""
    for patient in patients:
        shutil.copytree(acdc_dir / "training" / patient, destination / subset / patient)
    return destination


def case_files(folder, patient):
    """(image, label) of the ED frame of ``patient`` inside an ACDC folder."""
    image = sorted(p for p in (folder / patient).glob(f"{patient}_frame??.nii.gz"))[0]
    return image, image.with_name(image.name.replace(".nii.gz", "_gt.nii.gz"))


def read(path):
    with itk_warnings_off():
        return sitk.ReadImage(str(path))


def rewrite_label(path, change):
    """Replace a label file by ``change(label)``, keeping its geometry unless ``change`` alters it."""
    with itk_warnings_off():
        sitk.WriteImage(change(read(path)), str(path))


def test_round_trip_keeps_geometry_and_labels(acdc_dir, nnunet_env):
    target = convert_acdc(acdc_dir, patients=PATIENTS)
    assert target == nnunet_env["nnUNet_raw"] / "Dataset027_ACDC"
    labels = sorted((target / "labelsTr").iterdir())
    assert len(labels) == 2 * len(PATIENTS)
    for converted_label in labels:
        case_id = converted_label.name.removesuffix(".nii.gz")
        original_folder = acdc_dir / "training" / case_id.split("_")[0]
        pairs = (
            (original_folder / f"{case_id}.nii.gz", target / "imagesTr" / f"{case_id}_0000.nii.gz"),
            (original_folder / f"{case_id}_gt.nii.gz", converted_label),
        )
        for original_path, converted_path in pairs:
            assert converted_path.read_bytes() == original_path.read_bytes()  # copied byte for byte
            original, converted = read(original_path), read(converted_path)
            assert converted.GetSpacing() == original.GetSpacing()
            assert converted.GetOrigin() == original.GetOrigin()
            assert converted.GetDirection() == original.GetDirection()
            assert np.array_equal(sitk.GetArrayViewFromImage(converted), sitk.GetArrayViewFromImage(original))


def test_dataset_json_and_acdc_info(acdc_dir, nnunet_env):
    target = convert_acdc(acdc_dir, patients=PATIENTS)
    dataset = json.loads((target / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "cineMRI"}
    assert dataset["labels"] == {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
    assert dataset["numTraining"] == 8
    assert dataset["file_ending"] == ".nii.gz"
    info = json.loads((target / "acdc_info.json").read_text())
    assert sorted(info) == PATIENTS
    assert info["patient001"] == {
        "ED": 1,
        "ES": 12,
        "Group": "DCM",
        "Height": 184.0,
        "Weight": 95.0,
        "NbFrame": 30,
        "cases": ["patient001_frame01", "patient001_frame12"],
        "subset": "training",
    }
    assert {entry["Group"] for entry in info.values()} == {"DCM", "HCM", "MINF"}
    assert not (target / "imagesTs").exists()


def test_testing_patients_go_to_imagesTs(acdc_dir, nnunet_env, tmp_path):
    source = copy_patients(acdc_dir, tmp_path / "acdc", ["patient001"])
    copy_patients(acdc_dir, source, ["patient002"], subset="testing")
    for label in (source / "testing" / "patient002").glob("*_gt.nii.gz"):
        label.unlink()
    target = convert_acdc(source)
    assert sorted(p.name for p in (target / "imagesTs").iterdir()) == [
        "patient002_frame01_0000.nii.gz",
        "patient002_frame12_0000.nii.gz",
    ]
    assert not (target / "labelsTs").exists()
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 2
    assert json.loads((target / "acdc_info.json").read_text())["patient002"]["subset"] == "testing"


def test_holdout_sets_aside_one_patient_per_group_as_the_test_set(acdc_dir, nnunet_env):
    patients = [f"patient{number:03d}" for number in range(1, 100, 10)]  # ACDC numbers 20 per group: 2 each
    target = convert_acdc(acdc_dir, patients=patients, holdout=5)
    info = json.loads((target / "acdc_info.json").read_text())
    held_out = sorted(patient for patient, entry in info.items() if entry["subset"] == "holdout")
    assert len(held_out) == 5 and len({info[patient]["Group"] for patient in held_out}) == 5
    cases = sorted(case for patient in held_out for case in info[patient]["cases"])
    assert sorted(p.name.removesuffix("_0000.nii.gz") for p in (target / "imagesTs").iterdir()) == cases
    assert sorted(p.name.removesuffix(".nii.gz") for p in (target / "labelsTs").iterdir()) == cases
    assert not {p.name.split("_")[0] for p in (target / "imagesTr").iterdir()} & set(held_out)
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 10
    again = convert_acdc(acdc_dir, patients=patients, holdout=5, overwrite=True)
    assert sorted(p.name for p in (again / "labelsTs").iterdir()) == [f"{case}.nii.gz" for case in cases]


def test_holdout_is_refused_beside_a_testing_set_or_when_too_large(acdc_dir, nnunet_env, tmp_path):
    source = copy_patients(acdc_dir, tmp_path / "acdc", ["patient001", "patient021"])
    with pytest.raises(InputError, match="--holdout 2 must leave at least one"):
        convert_acdc(source, holdout=2)
    copy_patients(acdc_dir, source, ["patient041"], subset="testing")
    with pytest.raises(InputError, match="testing/ patients too"):
        convert_acdc(source, holdout=1)
    assert not (nnunet_env["nnUNet_raw"] / "Dataset027_ACDC").exists()


def test_folder_without_training_is_refused(nnunet_env, tmp_path):
    with pytest.raises(InputError, match="training/"):
        convert_acdc(tmp_path)


def test_unset_nnunet_raw_is_refused(acdc_dir, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(InputError, match="export nnUNet_raw="):
        convert_acdc(acdc_dir, patients=["patient001"])


def test_unknown_label_value_is_refused_and_leaves_nothing(acdc_dir, nnunet_env, tmp_path):
    source = copy_patients(acdc_dir, tmp_path / "acdc", ["patient001", "patient002"])
    _, label = case_files(source / "training", "patient002")

    def add_value_four(image):
        image[0, 0, 0] = 4
        return image

    rewrite_label(label, add_value_four)
    with pytest.raises(InputError, match=rf"{label.name} has label values \[4\]"):
        convert_acdc(source)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []


def test_missing_label_file_is_refused(acdc_dir, nnunet_env, tmp_path):
    source = copy_patients(acdc_dir, tmp_path / "acdc", ["patient001"])
    _, label = case_files(source / "training", "patient001")
    label.unlink()
    with pytest.raises(InputError, match=f"patient001 has no {label.name}"):
        convert_acdc(source)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []


def test_label_of_another_size_is_refused(acdc_dir, nnunet_env, tmp_path):
    source = copy_patients(acdc_dir, tmp_path / "acdc", ["patient001"])
    _, label = case_files(source / "training", "patient001")
    rewrite_label(label, lambda image: image[:-1, :, :])
    with pytest.raises(InputError, match=f"{label.name} size"):
        convert_acdc(source)


def test_existing_dataset_needs_overwrite(acdc_dir, nnunet_env):
    target = convert_acdc(acdc_dir, patients=["patient001"])
    with pytest.raises(InputError, match="--overwrite"):
        convert_acdc(acdc_dir, patients=["patient001", "patient002"])
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 2
    convert_acdc(acdc_dir, patients=["patient001", "patient002"], overwrite=True)
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 4
    assert sorted(p.name for p in nnunet_env["nnUNet_raw"].iterdir()) == ["Dataset027_ACDC"]


@pytest.mark.slow
def test_console_script(acdc_dir, nnunet_env):
    command = ["nnunet-autosam", "convert-acdc", str(acdc_dir), "-d", "27", "--patients", "patient001", "patient002"]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert str(nnunet_env["nnUNet_raw"] / "Dataset027_ACDC") in done.stdout
    assert "nnUNetv2_plan_and_preprocess -d 27 -c 2d" in done.stdout
    assert len(list((nnunet_env["nnUNet_raw"] / "Dataset027_ACDC" / "labelsTr").iterdir())) == 4
