"""Known-answer tests for `nnunet-autosam evaluate` on small synthetic volumes with anisotropic spacing.

The volumes are 8 x 16 x 16 voxels (z, y, x) with spacing 1.5 x 1.5 mm in-plane and 10 mm between
slices, written with SimpleITK (spacing given as x, y, z). A wrong axis order would swap the 10 mm and
1.5 mm answers below.
"""

import csv
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from medpy.metric.binary import assd, hd95
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunet_autosam.evaluation.metrics import evaluate_folder, surface_distances_mm
from nnunet_autosam.utilities.errors import InputError

SPACING_XYZ = (1.5, 1.5, 10.0)
SHAPE_ZYX = (8, 16, 16)
# field-of-view diagonal: 16 * 1.5 mm in x and y, 8 * 10 mm in z
DIAGONAL_MM = math.sqrt(24.0**2 + 24.0**2 + 80.0**2)


def write_volume(path: Path, array: np.ndarray, spacing=SPACING_XYZ) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def box(z=(2, 6), y=(4, 12), x=(4, 12), label=1, shape=SHAPE_ZYX) -> np.ndarray:
    """A 4 x 8 x 8 voxel box (z, y, x) by default, away from the image border."""
    array = np.zeros(shape, dtype=np.uint8)
    array[z[0] : z[1], y[0] : y[1], x[0] : x[1]] = label
    return array


def evaluate_pair(tmp_path, prediction, reference, labels=(1,), **kwargs) -> dict:
    write_volume(tmp_path / "pred" / "case.nii.gz", prediction)
    write_volume(tmp_path / "gt" / "case.nii.gz", reference)
    summary = evaluate_folder(tmp_path / "pred", tmp_path / "gt", labels=list(labels), num_processes=1, **kwargs)
    return summary["metric_per_case"][0]["metrics"]


def test_identical_masks_are_perfect(tmp_path):
    reference = box() + box(z=(3, 5), y=(6, 10), x=(6, 10), label=1)  # label 2 in the centre of label 1
    metrics = evaluate_pair(tmp_path, reference, reference, labels=(1, 2))
    for label in (1, 2):
        assert metrics[label]["Dice"] == 1.0
        assert metrics[label]["IoU"] == 1.0
        assert metrics[label]["ASSD_mm"] == 0.0
        assert metrics[label]["HD95_mm"] == 0.0


def test_shift_by_one_slice_along_z(tmp_path):
    """Box of 4 x 8 x 8 voxels moved by one slice (10 mm).

    Overlap 3 of 4 slices: Dice = 2*3/(4+4) = 0.75, IoU = 3/5. Each box has 256 - 2*6*6 = 184 surface
    voxels. From the prediction to the reference: its end face outside the reference (64 voxels) is
    10 mm from the reference's end face; its other end face is inside the reference, where its 36
    non-rim voxels lie 1.5, 3 or 4.5 mm (20, 12 and 4 voxels) in-plane from the reference's side
    walls (closer than the 10 mm to the next reference face); the rest (84 voxels) lie on the
    reference's surface. Per direction: 64*10 + 20*1.5 + 12*3 + 4*4.5 = 724 mm over 184 voxels, the
    same both ways by symmetry, so ASSD = 724/184 mm; 128 of the 368 distances are 10 mm, so the
    95th percentile is 10 mm.
    """
    metrics = evaluate_pair(tmp_path, box(z=(3, 7)), box())[1]
    assert metrics["Dice"] == pytest.approx(0.75)
    assert metrics["IoU"] == pytest.approx(0.6)
    assert metrics["ASSD_mm"] == pytest.approx(724 / 184)
    assert metrics["HD95_mm"] == pytest.approx(10.0)


def test_shift_by_one_voxel_in_plane(tmp_path):
    """The same box moved by one voxel along x (1.5 mm).

    Overlap 7 of 8 columns: Dice = 0.875, IoU = 7/9. Per direction, the outer x-face (4 x 8 = 32
    voxels) and the 2 x 6 = 12 non-rim voxels of the inner x-face are 1.5 mm from the other surface,
    all else lies on it: ASSD = 44 * 1.5 / 184 mm; 88 of 368 distances are 1.5 mm, so HD95 = 1.5 mm.
    """
    metrics = evaluate_pair(tmp_path, box(x=(5, 13)), box())[1]
    assert metrics["Dice"] == pytest.approx(0.875)
    assert metrics["IoU"] == pytest.approx(7 / 9)
    assert metrics["ASSD_mm"] == pytest.approx(44 * 1.5 / 184)
    assert metrics["HD95_mm"] == pytest.approx(1.5)


def test_empty_prediction_scores_zero_dice_and_the_diagonal(tmp_path):
    metrics = evaluate_pair(tmp_path, np.zeros(SHAPE_ZYX), box())[1]
    assert metrics["Dice"] == 0.0
    assert metrics["ASSD_mm"] == pytest.approx(DIAGONAL_MM)
    assert metrics["HD95_mm"] == pytest.approx(DIAGONAL_MM)


def test_empty_reference_scores_zero_dice_and_the_diagonal(tmp_path):
    metrics = evaluate_pair(tmp_path, box(), np.zeros(SHAPE_ZYX))[1]
    assert metrics["Dice"] == 0.0
    assert metrics["ASSD_mm"] == pytest.approx(DIAGONAL_MM)
    assert metrics["HD95_mm"] == pytest.approx(DIAGONAL_MM)


def test_both_empty_is_nan_and_left_out_of_the_means(tmp_path):
    """Label 2 is absent from case a (both masks) and perfect in case b: its means come from b alone."""
    write_volume(tmp_path / "gt" / "a.nii.gz", box())
    write_volume(tmp_path / "pred" / "a.nii.gz", box())
    write_volume(tmp_path / "gt" / "b.nii.gz", box(label=2))
    write_volume(tmp_path / "pred" / "b.nii.gz", box(label=2))
    summary = evaluate_folder(tmp_path / "pred", tmp_path / "gt", labels=[1, 2], num_processes=1)
    absent = summary["metric_per_case"][0]["metrics"][2]
    assert all(math.isnan(absent[name]) for name in ("Dice", "IoU", "ASSD_mm", "HD95_mm"))
    assert summary["mean"][2]["Dice"] == 1.0
    assert summary["mean"][2]["ASSD_mm"] == 0.0
    assert summary["foreground_mean"]["HD95_mm"] == 0.0


def test_cropping_keeps_medpy_results_exact():
    """surface_distances_mm crops to the masks' bounding box; compare with medpy on the whole volume."""
    rng = np.random.default_rng(0)
    spacing = np.array([10.0, 1.5, 1.5])
    for _ in range(5):
        reference = rng.random(SHAPE_ZYX) > 0.7
        prediction = np.roll(reference, 1, axis=2) | (rng.random(SHAPE_ZYX) > 0.95)
        prediction[0, 0, :] = True  # touches the image border
        expected = (
            assd(prediction, reference, voxelspacing=spacing),
            hd95(prediction, reference, voxelspacing=spacing),
        )
        assert surface_distances_mm(prediction, reference, spacing) == pytest.approx(expected)


@pytest.fixture
def three_label_folder(tmp_path):
    """Three cases with labels 1-3, predictions shifted, one with a label missing, under tmp_path/pred and /gt."""
    references = [
        box(label=1) + box(z=(3, 5), y=(6, 10), x=(6, 10), label=1) + box(z=(6, 8), label=3),
        box(label=2) + box(z=(6, 8), x=(0, 3), label=3),
        box(label=1),
    ]
    predictions = [np.roll(references[0], 1, axis=0), np.roll(references[1], 2, axis=2), np.zeros(SHAPE_ZYX)]
    for index, (prediction, reference) in enumerate(zip(predictions, references)):
        write_volume(tmp_path / "gt" / f"case{index}.nii.gz", reference)
        write_volume(tmp_path / "pred" / f"case{index}.nii.gz", prediction)
    return tmp_path


def test_dice_and_iou_agree_with_nnunet_and_json_is_a_superset(three_label_folder):
    folder = three_label_folder
    ours = evaluate_folder(
        folder / "pred", folder / "gt", labels=[1, 2, 3], output_file=folder / "ours.json", num_processes=2
    )
    theirs = compute_metrics_on_folder(
        str(folder / "gt"),
        str(folder / "pred"),
        str(folder / "nnunet.json"),
        SimpleITKIO(),
        ".nii.gz",
        [1, 2, 3],
        num_processes=1,
    )
    for our_case, their_case in zip(ours["metric_per_case"], theirs["metric_per_case"]):
        assert Path(our_case["reference_file"]).name == Path(their_case["reference_file"]).name
        for label, their_metrics in their_case["metrics"].items():
            for name, value in their_metrics.items():
                assert our_case["metrics"][label][name] == pytest.approx(value, nan_ok=True)
    assert ours["foreground_mean"]["Dice"] == pytest.approx(theirs["foreground_mean"]["Dice"])

    def assert_superset(their_json, our_json):
        if isinstance(their_json, dict):
            assert set(their_json) <= set(our_json)
            for key in their_json:
                assert_superset(their_json[key], our_json[key])
        elif isinstance(their_json, list):
            assert len(their_json) == len(our_json)
            for their_item, our_item in zip(their_json, our_json):
                assert_superset(their_item, our_item)

    our_json = json.loads((folder / "ours.json").read_text())
    assert_superset(json.loads((folder / "nnunet.json").read_text()), our_json)
    assert {"ASSD_mm", "HD95_mm"} <= set(our_json["foreground_mean"]) & set(our_json["mean"]["1"])
    assert {"ASSD_mm", "HD95_mm"} <= set(our_json["metric_per_case"][0]["metrics"]["1"])


def test_csv_has_one_row_per_case_and_label(three_label_folder):
    folder = three_label_folder
    summary = evaluate_folder(
        folder / "pred", folder / "gt", labels=[1, 2, 3], output_file=folder / "s.json", num_processes=1
    )
    with open(folder / "s.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 3
    assert {"case", "label", "Dice", "IoU", "ASSD_mm", "HD95_mm", "n_pred", "n_ref"} <= set(rows[0])
    row = next(r for r in rows if r["case"] == "case0.nii.gz" and r["label"] == "1")
    assert float(row["HD95_mm"]) == pytest.approx(summary["metric_per_case"][0]["metrics"][1]["HD95_mm"])


def test_labels_default_to_dataset_json_else_to_the_values_found(three_label_folder):
    folder = three_label_folder
    found = evaluate_folder(folder / "pred", folder / "gt", num_processes=1)
    assert list(found["mean"]) == [1, 2, 3]
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}}))
    declared = evaluate_folder(folder / "pred", folder / "gt", num_processes=1)
    assert list(declared["mean"]) == [1, 2]


def test_shape_mismatch_names_the_case(tmp_path):
    write_volume(tmp_path / "gt" / "bad.nii.gz", box())
    write_volume(tmp_path / "pred" / "bad.nii.gz", np.zeros((8, 16, 15)))
    with pytest.raises(InputError, match="bad.nii.gz"):
        evaluate_folder(tmp_path / "pred", tmp_path / "gt", labels=[1], num_processes=1)


def test_missing_predictions_are_listed(tmp_path):
    for name in ("a", "b", "c"):
        write_volume(tmp_path / "gt" / f"{name}.nii.gz", box())
    write_volume(tmp_path / "pred" / "a.nii.gz", box())
    with pytest.raises(InputError, match="2 of 3 cases.*b, c"):
        evaluate_folder(tmp_path / "pred", tmp_path / "gt", labels=[1], num_processes=1)


@pytest.mark.slow
def test_console_script_writes_json_and_csv(three_label_folder):
    folder = three_label_folder
    output = folder / "out" / "summary.json"
    script = shutil.which("nnunet-autosam")
    assert script, "the console script is not installed: pip install -e ."
    completed = subprocess.run(
        [
            script,
            "evaluate",
            str(folder / "pred"),
            str(folder / "gt"),
            "-o",
            str(output),
            "-l",
            "1",
            "2",
            "3",
            "-np",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "mean Dice" in completed.stdout
    assert json.loads(output.read_text())["metric_per_case"][0]["metrics"]["1"]["HD95_mm"] == pytest.approx(10.0)
    assert output.with_suffix(".csv").is_file()


def test_acdc_reference_against_itself(acdc_dir, tmp_path):
    files = sorted((acdc_dir / "training" / "patient001").glob("patient001_frame*_gt.nii.gz"))
    (tmp_path / "gt").mkdir()
    for file in files:
        (tmp_path / "gt" / file.name).symlink_to(file)
    summary = evaluate_folder(tmp_path / "gt", tmp_path / "gt", num_processes=2)
    assert len(summary["metric_per_case"]) == 2
    assert list(summary["mean"]) == [1, 2, 3]
    assert summary["foreground_mean"]["Dice"] == 1.0
    assert summary["foreground_mean"]["ASSD_mm"] == 0.0
