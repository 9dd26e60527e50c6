"""`nnunet-autosam verify`: every damaged or mismatched file of a raw dataset listed at once, non-zero exit."""

import json

import pytest
import SimpleITK as sitk
from damaged_files import DAMAGES, cli_run

from nnunet_autosam.data.conversion import convert_acdc
from nnunet_autosam.data.synthetic import write_synthetic_acdc
from nnunet_autosam.data.verify import verify_dataset
from nnunet_autosam.run import doctor

# one damaged file per kind, spread over the four folders verify reads
DAMAGED_FILES = {
    "truncated image": "imagesTr/patient001_frame01_0000.nii.gz",
    "truncated label": "labelsTr/patient002_frame10.nii.gz",
    "flipped byte": "imagesTs/patient101_frame01_0000.nii.gz",
    "header promises more voxels": "labelsTs/patient101_frame10.nii.gz",
}


@pytest.fixture
def raw_dataset(tmp_path, nnunet_env):
    """Dataset027 converted from three small synthetic training patients and one testing patient."""
    source = write_synthetic_acdc(tmp_path / "acdc", num_patients=3, num_testing=1, shape=(3, 32, 32))
    return convert_acdc(source)


def rewrite(path, change) -> None:
    """Read a file, change the image, write it back (compressed, as nnU-Net datasets are)."""
    sitk.WriteImage(change(sitk.ReadImage(str(path))), str(path), useCompression=True)


@pytest.mark.slow
def test_an_intact_dataset_passes(raw_dataset):
    problems, num_files = verify_dataset(raw_dataset)
    assert problems == [] and num_files == 16
    result = cli_run("verify", "27")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 16 files complete" in result.stdout


def test_every_damaged_file_is_listed_at_once(raw_dataset):
    for damage, relative in DAMAGED_FILES.items():
        _, apply, _ = DAMAGES[damage]
        apply(raw_dataset / relative)
    result = cli_run("verify", "27")
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(DAMAGED_FILES) + 1, result.stdout
    for damage, relative in DAMAGED_FILES.items():
        [line] = [line for line in lines if str(raw_dataset / relative) in line]
        assert DAMAGES[damage][2] in line
    assert lines[-1].startswith(f"{raw_dataset.name}: 4 problem(s) in 16 files")


def test_geometry_labels_names_and_counts_are_listed_too(raw_dataset):
    off_grid = raw_dataset / "labelsTr" / "patient001_frame10.nii.gz"
    unknown = raw_dataset / "labelsTr" / "patient002_frame01.nii.gz"

    def coarser(image):
        image.SetSpacing((2.0, 2.0, 10.0))
        return image

    def add_seven(image):
        array = sitk.GetArrayFromImage(image)
        array[0, 0, 0] = 7
        changed = sitk.GetImageFromArray(array)
        changed.CopyInformation(image)
        return changed

    rewrite(off_grid, coarser)
    rewrite(unknown, add_seven)
    (raw_dataset / "labelsTr" / "patient003_frame01.nii.gz").unlink()
    (raw_dataset / "imagesTr" / "stray.nii.gz").write_bytes(b"")
    dataset_json = json.loads((raw_dataset / "dataset.json").read_text())
    (raw_dataset / "dataset.json").write_text(json.dumps({**dataset_json, "numTraining": 7}))

    problems, _ = verify_dataset(raw_dataset)
    assert len(problems) == 5, problems
    text = "\n".join(problems)
    assert f"{off_grid} spacing (2.0, 2.0, 10.0) differs from patient001_frame10_0000.nii.gz's" in text
    assert f"{unknown} has label values [7]" in text
    assert "labelsTr/patient003_frame01.nii.gz is missing" in text
    assert "stray.nii.gz is not named CASE_XXXX.nii.gz" in text
    assert "numTraining 7 but imagesTr holds 6 cases" in text


def test_real_acdc_patients_pass(acdc_dir, nnunet_env):
    target = convert_acdc(acdc_dir, patients=["patient001", "patient002"])
    assert verify_dataset(target) == ([], 8)


def test_doctor_points_to_verify(capsys):
    doctor.run_doctor(None)
    assert "nnunet-autosam verify DATASET" in capsys.readouterr().out
