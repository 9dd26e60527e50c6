"""`nnunet-autosam report` on a fake results tree: three methods, two budgets with two seeds each.

- nnU-Net 2d: all four folds trained.
- AutoSAM with its own plans: fold 3 never trained, plus a trained fold 7 the split table lacks.
- SAM encoder + CNN: fold 0 trained but one validation prediction missing, fold 1 only started.
"""

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_autosam.evaluation.methods import method_display_name
from nnunet_autosam.evaluation.metrics import evaluate_folder
from nnunet_autosam.evaluation.report import build_report
from nnunet_autosam.utilities.errors import InputError

DATASET = "Dataset027_ACDC"
LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
VAL_CASES = ["patient090_frame01", "patient091_frame01", "patient092_frame01"]
TRAIN_CASES = ["patient001_frame01", "patient002_frame01"]
FOLDS = [
    {"fold": 0, "budget": 1, "seed": 0},
    {"fold": 1, "budget": 1, "seed": 1},
    {"fold": 2, "budget": 5, "seed": 0},
    {"fold": 3, "budget": 5, "seed": 1},
]
NNUNET = "nnUNetTrainer__nnUNetPlans__2d"
AUTOSAM = "AutoSAMTrainer__nnUNetPlans_SAM_tiny_256__2d"
SAMCNN = "SAMCNNTrainer__nnUNetPlans__2d"


def write_volume(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((1.5, 1.5, 10.0))
    sitk.WriteImage(image, str(path))


def reference(index: int) -> np.ndarray:
    """RV box beside a ring of myocardium (MLV) around the LV cavity (LVC); sizes vary by case."""
    array = np.zeros((6, 32, 32), dtype=np.uint8)
    array[1:5, 8:24, 2 : 8 + index] = 1
    array[1:5, 8:24, 12:28] = 2
    array[1:5, 11:21, 15:25] = 3
    return array


def add_method(results, method, folds, shift_by_fold, skip_case=None, unfinished=()):
    for fold in folds:
        fold_dir = results / method / f"fold_{fold}"
        (fold_dir / "validation").mkdir(parents=True)
        (fold_dir / "checkpoint_final.pth").write_bytes(b"fake")
        for index, case in enumerate(VAL_CASES):
            if case != skip_case:
                prediction = np.roll(reference(index), shift_by_fold(fold), axis=2)
                write_volume(fold_dir / "validation" / f"{case}.nii.gz", prediction)
    for fold in unfinished:
        (results / method / f"fold_{fold}").mkdir(parents=True)
        (results / method / f"fold_{fold}" / "checkpoint_latest.pth").write_bytes(b"fake")


@pytest.fixture
def fake_tree(nnunet_env):
    raw = nnunet_env["nnUNet_raw"] / DATASET
    raw.mkdir()
    (raw / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "cineMRI"}, "labels": LABELS, "numTraining": 5, "file_ending": ".nii.gz"})
    )
    preprocessed = nnunet_env["nnUNet_preprocessed"] / DATASET
    for index, case in enumerate(VAL_CASES + TRAIN_CASES):
        write_volume(preprocessed / "gt_segmentations" / f"{case}.nii.gz", reference(index))
    table = {
        "dataset": DATASET,
        "val_patients": ["patient090", "patient091", "patient092"],
        "folds": [
            {**fold, "train_patients": ["patient001"], "train_cases": TRAIN_CASES[:1], "val_cases": VAL_CASES}
            for fold in FOLDS
        ],
    }
    (preprocessed / "few_label_splits.json").write_text(json.dumps(table))

    results = nnunet_env["nnUNet_results"] / DATASET
    add_method(results, NNUNET, folds=[0, 1, 2, 3], shift_by_fold=lambda fold: fold % 2)
    add_method(results, AUTOSAM, folds=[0, 1, 2, 7], shift_by_fold=lambda fold: 1 + fold % 2)
    add_method(results, SAMCNN, folds=[0], shift_by_fold=lambda fold: 1, skip_case=VAL_CASES[1], unfinished=[1])
    pretraining = results / "nnUNetTrainerSimCLR__nnUNetPlans__2d" / "fold_all"  # trained on no split: no row
    pretraining.mkdir(parents=True)
    (pretraining / "checkpoint_final.pth").write_bytes(b"fake")
    return nnunet_env


def read_rows(out_dir):
    with open(out_dir / "report.csv", newline="") as f:
        return {(int(row["budget"]), row["folder"]): row for row in csv.DictReader(f)}


def test_display_names():
    assert method_display_name(NNUNET) == "nnU-Net 2d"
    assert method_display_name(AUTOSAM) == "AutoSAM [nnUNetPlans_SAM_tiny_256]"
    assert method_display_name("AutoSAMFullFTTrainer__nnUNetPlans__3d_fullres") == "AutoSAM (ft all) (3d_fullres)"
    assert method_display_name("MyTrainer__nnUNetPlans__2d") == "MyTrainer"


def test_report_table_seeds_missing_folds_and_plot(fake_tree):
    out_dir = build_report(DATASET, num_processes=1)
    assert out_dir == fake_tree["nnUNet_results"] / DATASET / "autosam_report"
    rows = read_rows(out_dir)
    assert set(rows) == {(budget, method) for budget in (1, 5) for method in (NNUNET, AUTOSAM, SAMCNN)}
    seeds = {key: int(row["n_seeds"]) for key, row in rows.items()}
    assert seeds == {(1, NNUNET): 2, (5, NNUNET): 2, (1, AUTOSAM): 2, (5, AUTOSAM): 1, (1, SAMCNN): 0, (5, SAMCNN): 0}
    assert rows[(5, AUTOSAM)]["missing_folds"] == "3"
    assert rows[(1, SAMCNN)]["missing_folds"] == "0 1"
    assert rows[(1, AUTOSAM)]["method"] == "AutoSAM [nnUNetPlans_SAM_tiny_256]"

    markdown = (out_dir / "report.md").read_text()
    assert "| method | RV | Myo | LV | mean Dice | ASSD (mm) | HD95 (mm) | n | missing folds |" in markdown
    assert "## 1 labelled patient\n" in markdown and "## 5 labelled patients\n" in markdown
    assert "fold 3 (budget 5, seed 1): not trained" in markdown
    assert "fold 0 (budget 1, seed 0): 1 of 3 predictions missing" in markdown
    assert f"`{AUTOSAM}` fold 7" in markdown  # trained but not in the split table
    assert (out_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_values_match_evaluate_folder(fake_tree):
    out_dir = build_report(DATASET, num_processes=1)
    row = read_rows(out_dir)[(1, AUTOSAM)]
    results = fake_tree["nnUNet_results"] / DATASET / AUTOSAM
    gt_dir = fake_tree["nnUNet_preprocessed"] / DATASET / "gt_segmentations"
    summaries = [
        evaluate_folder(results / f"fold_{fold}" / "validation", gt_dir, cases=VAL_CASES, num_processes=1)
        for fold in (0, 1)
    ]
    myo = [100 * summary["mean"][2]["Dice"] for summary in summaries]
    mean_dice = [100 * summary["foreground_mean"]["Dice"] for summary in summaries]
    assd = [summary["foreground_mean"]["ASSD_mm"] for summary in summaries]
    hd95 = [summary["foreground_mean"]["HD95_mm"] for summary in summaries]
    assert float(row["Dice_Myo_mean"]) == pytest.approx(np.mean(myo))
    assert float(row["Dice_Myo_std"]) == pytest.approx(np.std(myo, ddof=1))
    assert float(row["mean_Dice_mean"]) == pytest.approx(np.mean(mean_dice))
    assert float(row["ASSD_mm_mean"]) == pytest.approx(np.mean(assd))
    assert float(row["HD95_mm_mean"]) == pytest.approx(np.mean(hd95))
    assert np.std(mean_dice) > 0  # the two seeds differ, so the spread is really tested
    single_seed = read_rows(out_dir)[(5, AUTOSAM)]
    assert math.isnan(float(single_seed["mean_Dice_std"]))


def test_test_set_predictions(fake_tree, tmp_path):
    labels_ts = fake_tree["nnUNet_raw"] / DATASET / "labelsTs"
    for index, case in enumerate(VAL_CASES[:2]):
        write_volume(labels_ts / f"{case}.nii.gz", reference(index))
        write_volume(tmp_path / "test_pred" / NNUNET / "fold_0" / f"{case}.nii.gz", reference(index))
    out_dir = build_report(DATASET, test_pred_root=tmp_path / "test_pred", num_processes=1)
    assert out_dir.name == "autosam_report_test"
    rows = read_rows(out_dir)
    assert float(rows[(1, NNUNET)]["mean_Dice_mean"]) == pytest.approx(100.0)
    assert rows[(1, NNUNET)]["missing_folds"] == "1"  # trained, but no test predictions


def test_test_predictions_count_without_their_model(fake_tree, tmp_path):
    """A comparison's runs/ carried to another machine brings each fold's test predictions, not its model."""
    labels_ts = fake_tree["nnUNet_raw"] / DATASET / "labelsTs"
    moved = "SAMLinearTrainer__nnUNetPlans__2d"  # no folder in nnUNet_results at all
    for index, case in enumerate(VAL_CASES[:2]):
        write_volume(labels_ts / f"{case}.nii.gz", reference(index))
        write_volume(tmp_path / "test_pred" / moved / "fold_2" / f"{case}.nii.gz", reference(index))
        write_volume(tmp_path / "test_pred" / AUTOSAM / "fold_3" / f"{case}.nii.gz", reference(index))
    write_volume(tmp_path / "test_pred" / moved / "fold_3" / f"{VAL_CASES[0]}.nii.gz", reference(0))
    rows = read_rows(build_report(DATASET, test_pred_root=tmp_path / "test_pred", num_processes=1))
    assert float(rows[(5, moved)]["mean_Dice_mean"]) == pytest.approx(100.0)
    assert rows[(5, moved)]["n_seeds"] == "1" and rows[(5, moved)]["missing_folds"] == "3"  # 1 of 2 predicted
    assert rows[(1, moved)]["missing_folds"] == "0 1"
    assert rows[(5, AUTOSAM)]["n_seeds"] == "1"  # fold 3 was never trained: its predictions are scored


def test_missing_split_table_is_an_input_error(fake_tree):
    (fake_tree["nnUNet_preprocessed"] / DATASET / "few_label_splits.json").unlink()
    with pytest.raises(InputError, match="few_label_splits.json"):
        build_report(DATASET, num_processes=1)


def test_zero_shot_predictions_are_one_more_method_in_every_block(fake_tree, tmp_path):
    zero_shot = tmp_path / "zero_shot_vit_b"
    for index, case in enumerate(VAL_CASES):
        write_volume(zero_shot / f"{case}.nii.gz", np.roll(reference(index), 2, axis=1))
    out_dir = build_report(DATASET, num_processes=1, zero_shot_dirs=[zero_shot])
    rows = read_rows(out_dir)
    expected = evaluate_folder(
        zero_shot, fake_tree["nnUNet_preprocessed"] / DATASET / "gt_segmentations", cases=VAL_CASES, num_processes=1
    )["foreground_mean"]["Dice"]
    for budget in (1, 5):
        row = rows[(budget, "zero-shot:zero_shot_vit_b")]
        assert row["method"] == "zero-shot SAM, oracle box prompts [zero_shot_vit_b]"
        assert float(row["mean_Dice_mean"]) == pytest.approx(100 * expected)
    (zero_shot / f"{VAL_CASES[0]}.nii.gz").unlink()
    with pytest.raises(InputError, match="lacks 1 of 3 predictions"):
        build_report(DATASET, num_processes=1, zero_shot_dirs=[zero_shot])
