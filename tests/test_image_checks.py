"""Truncated or corrupt NIfTI files are refused in one line by the check and by convert-acdc, evaluate and zero-shot."""

import gzip
import subprocess

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from damaged_files import DAMAGES, cli_run, truncate

from nnunet_autosam import cli
from nnunet_autosam.data.conversion import convert_acdc
from nnunet_autosam.data.image_checks import itk_warnings_off, nifti_problem, require_intact
from nnunet_autosam.data.synthetic import write_synthetic_acdc
from nnunet_autosam.evaluation.metrics import evaluate_folder
from nnunet_autosam.utilities.errors import InputError

SMALL = (3, 32, 32)


def assert_one_line_naming(result: subprocess.CompletedProcess, path, word: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert str(path) in lines[0] and word in lines[0]


def assert_refusal_is_one_line(error, path, word: str) -> None:
    assert "\n" not in error.value.message
    assert str(path) in error.value.message and word in error.value.message


@pytest.fixture
def acdc_like(tmp_path):
    """A two-patient ACDC-layout folder of small synthetic frames, and patient002's first image and label."""
    folder = write_synthetic_acdc(tmp_path / "acdc", num_patients=2, shape=SMALL)
    patient = folder / "training" / "patient002"
    return folder, {"image": patient / "patient002_frame01.nii.gz", "label": patient / "patient002_frame01_gt.nii.gz"}


# --- the check itself ---------------------------------------------------------------------------------------------


def test_intact_files_pass_and_other_formats_are_not_checked(acdc_like, tmp_path):
    _, files = acdc_like
    assert nifti_problem(files["image"]) is None and nifti_problem(files["label"]) is None
    other = tmp_path / "volume.mha"
    other.write_bytes(b"not looked at")
    assert nifti_problem(other) is None


@pytest.mark.parametrize("damage", DAMAGES)
def test_each_damage_is_found(acdc_like, damage):
    _, files = acdc_like
    role, apply, word = DAMAGES[damage]
    apply(files[role])
    with pytest.raises(InputError) as error:
        require_intact(files[role])
    assert_refusal_is_one_line(error, files[role], word)
    assert "copy the file again" in error.value.message


def test_simpleitk_alone_reads_a_truncated_file_as_whole(acdc_like):
    """Why the check exists: without it the cut-off voxels silently become zeros."""
    _, files = acdc_like
    truncate(files["image"])
    with itk_warnings_off():
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(files["image"]))).shape == SMALL


def test_plain_nii_and_nifti2_are_checked_too(tmp_path):
    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    plain, nifti2 = tmp_path / "plain.nii", tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), plain)
    nib.save(nib.Nifti2Image(volume, np.eye(4)), nifti2)
    assert nifti_problem(plain) is None and nifti_problem(nifti2) is None
    plain.write_bytes(plain.read_bytes()[:-2])
    assert "header promises" in nifti_problem(plain)
    nifti2.write_bytes(gzip.compress(gzip.decompress(nifti2.read_bytes())[:-2]))
    assert "header promises" in nifti_problem(nifti2)
    plain.write_bytes(b"\0" * 10)
    assert "not NIfTI" in nifti_problem(plain)


# --- convert-acdc -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", DAMAGES)
def test_convert_acdc_refuses_and_leaves_nothing(acdc_like, nnunet_env, damage):
    source, files = acdc_like
    role, apply, word = DAMAGES[damage]
    apply(files[role])
    with pytest.raises(InputError) as error:
        convert_acdc(source)
    assert_refusal_is_one_line(error, files[role], word)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []


@pytest.mark.slow
def test_convert_acdc_command_says_one_line(acdc_like, nnunet_env):
    source, files = acdc_like
    truncate(files["label"])
    assert_one_line_naming(cli_run("convert-acdc", str(source)), files["label"], "truncated")
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []


def test_intact_files_are_still_copied_byte_for_byte(acdc_like, nnunet_env):
    source, files = acdc_like
    target = convert_acdc(source)
    assert (target / "imagesTr" / "patient002_frame01_0000.nii.gz").read_bytes() == files["image"].read_bytes()
    assert (target / "labelsTr" / "patient002_frame01.nii.gz").read_bytes() == files["label"].read_bytes()


# --- evaluate (and report, which scores through it) ----------------------------------------------------------------


@pytest.fixture
def prediction_folders(acdc_like, tmp_path):
    """pred/ and gt/ holding the same two label files; returns (pred dir, gt dir, files by role)."""
    source, _ = acdc_like
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        for patient in ("patient001", "patient002"):
            label = source / "training" / patient / f"{patient}_frame01_gt.nii.gz"
            (tmp_path / folder / f"{patient}.nii.gz").write_bytes(label.read_bytes())
    files = {"image": tmp_path / "pred" / "patient002.nii.gz", "label": tmp_path / "gt" / "patient002.nii.gz"}
    return tmp_path / "pred", tmp_path / "gt", files


@pytest.mark.parametrize("damage", DAMAGES)
def test_evaluate_refuses_damaged_predictions_and_references(prediction_folders, damage):
    pred_dir, gt_dir, files = prediction_folders
    role, apply, word = DAMAGES[damage]
    apply(files[role])
    with pytest.raises(InputError) as error:
        evaluate_folder(pred_dir, gt_dir, labels=[1, 2, 3], output_file=pred_dir / "summary.json", num_processes=1)
    assert_refusal_is_one_line(error, files[role], word)
    assert not (pred_dir / "summary.json").exists()


@pytest.mark.slow
def test_evaluate_command_says_one_line(prediction_folders):
    pred_dir, gt_dir, files = prediction_folders
    truncate(files["image"])
    assert_one_line_naming(cli_run("evaluate", str(pred_dir), str(gt_dir), "-np", "1"), files["image"], "truncated")


# --- zero-shot ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", DAMAGES)
def test_zero_shot_refuses_damaged_inputs_before_writing(acdc_like, nnunet_env, tmp_path, damage):
    source, _ = acdc_like
    raw = convert_acdc(source)
    role, apply, word = DAMAGES[damage]
    damaged = raw / (
        "imagesTr/patient002_frame01_0000.nii.gz" if role == "image" else "labelsTr/patient002_frame01.nii.gz"
    )
    apply(damaged)
    with pytest.raises(InputError) as error:
        cli.main(
            [
                "zero-shot",
                "-d",
                "27",
                "-i",
                str(raw / "imagesTr"),
                "-o",
                str(tmp_path / "out"),
                "--encoder",
                "tiny",
                "--input-size",
                "64",
                "--device",
                "cpu",
            ]
        )
    assert_refusal_is_one_line(error, damaged, word)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_zero_shot_command_says_one_line(acdc_like, nnunet_env, tmp_path):
    source, _ = acdc_like
    raw = convert_acdc(source)
    damaged = raw / "imagesTr" / "patient001_frame10_0000.nii.gz"
    truncate(damaged)
    result = cli_run(
        "zero-shot",
        "-d",
        "27",
        "-i",
        str(raw / "imagesTr"),
        "-o",
        str(tmp_path / "out"),
        "--encoder",
        "tiny",
        "--input-size",
        "64",
        "--device",
        "cpu",
    )
    assert_one_line_naming(result, damaged, "truncated")
    assert not (tmp_path / "out").exists()
