"""`nnunet-autosam pseudo-labels` through the stock CLI: teachers trained on a few-label fold label the fold's
unlabelled cases, and nnU-Net trains and predicts on the student dataset.

The synthetic ACDC dataset with the tiny encoder proves the plumbing, not the method's quality.
"""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import cli, nnunet_env, run

from nnunet_autosam.data.conversion import convert_acdc
from nnunet_autosam.data.synthetic import write_synthetic_acdc
from nnunet_autosam.utilities.commands import BASELINE_TRAINER, SEQUENTIAL_PREDICTION

pytestmark = pytest.mark.slow  # nnU-Net's CLI in subprocesses

MIN_CONFIDENCE, LABELLED_WEIGHT = 0.4, 3


def cases_in(folder, ending=".nii.gz"):
    return sorted(path.name[: -len(ending)] for path in folder.glob(f"*{ending}"))


@pytest.fixture(scope="module")
def fold(tmp_path_factory):
    """Dataset027 (6 synthetic patients, 1 held out as imagesTs), its fold 0 (1 labelled patient, 1 for
    validation, 3 left unlabelled) and two teachers trained on it: AutoSAM (tiny encoder) and nnU-Net."""
    root = tmp_path_factory.mktemp("pseudo")
    env = nnunet_env(root)
    source = write_synthetic_acdc(root / "synthetic", num_patients=6)
    os.environ.update(nnUNet_raw=env["nnUNet_raw"])  # convert_acdc reads it in-process
    try:
        raw = convert_acdc(source, dataset_id=27, holdout=1)
    finally:
        os.environ.pop("nnUNet_raw")
    run(["nnUNetv2_plan_and_preprocess", "-d", "27", "-c", "2d", "-np", "1"], env)
    plans = run(cli("plans", "27", "--encoder", "tiny", "--input-size", "128", "--batch-size", "2"), env)
    sam_plans = plans.stdout.strip().splitlines()[-1]
    run(cli("splits", "27", "--labelled", "1", "--seeds", "1", "--val-patients", "1"), env)
    for trainer, trainer_plans in (("AutoSAMTrainer", sam_plans), (BASELINE_TRAINER, "nnUNetPlans")):
        run(["nnUNetv2_train", "27", "2d", "0", "-tr", trainer, "-p", trainer_plans, "-device", "cpu"], env)
    split = json.loads((root / "preprocessed" / raw.name / "splits_final.json").read_text())[0]
    unlabelled = sorted(set(cases_in(raw / "imagesTr", "_0000.nii.gz")) - set(split["train"]) - set(split["val"]))
    for case in unlabelled:  # the labels the fold pretends not to have: the command must not need them
        (raw / "labelsTr" / f"{case}.nii.gz").unlink()
    return {"root": root, "env": env, "raw": raw, "split": split, "unlabelled": unlabelled, "sam_plans": sam_plans}


def test_the_student_learns_from_the_teachers_labels_of_the_unlabelled_cases_only(fold):
    root, env, raw, split = fold["root"], fold["env"], fold["raw"], fold["split"]
    test_cases = cases_in(raw / "imagesTs", "_0000.nii.gz")
    assert test_cases and len(fold["unlabelled"]) == 6  # 3 patients of 2 frames each
    teachers = ["--teacher", f"AutoSAMTrainer:{fold['sam_plans']}", "--teacher", f"{BASELINE_TRAINER}:nnUNetPlans"]
    options = ["--min-confidence", str(MIN_CONFIDENCE), "--labelled-weight", str(LABELLED_WEIGHT)]
    made = run(cli("pseudo-labels", "27", "-f", "0", *teachers, "--student-id", "28", *options, "--device", "cpu"), env)
    assert "2 labelled, 2 validation and 6 unlabelled cases" in made.stdout

    student = root / "raw" / "Dataset028_ACDC_pseudo_fold0"
    assert not (student / "imagesTs").exists()
    assert cases_in(student / "imagesTr", "_0000.nii.gz") == sorted(split["train"] + split["val"] + fold["unlabelled"])
    assert cases_in(student / "labelsTr") == cases_in(student / "imagesTr", "_0000.nii.gz")
    assert not set(test_cases) & set(cases_in(student / "labelsTr"))
    record = json.loads((student / "pseudo_labels.json").read_text())
    assert record["unlabelled"] == fold["unlabelled"] and record["validation"] == split["val"]
    for case in split["train"] + split["val"]:  # the fold's own labels, unchanged
        assert (student / "labelsTr" / f"{case}.nii.gz").resolve() == (raw / "labelsTr" / f"{case}.nii.gz").resolve()

    dataset_json = json.loads((student / "dataset.json").read_text())
    assert dataset_json["labels"]["ignore"] == 4 and dataset_json["numTraining"] == 10
    predictions = root / "results" / student.name / "teacher_predictions"
    teacher_dirs = [
        predictions / f"AutoSAMTrainer__{fold['sam_plans']}__2d",
        predictions / f"{BASELINE_TRAINER}__nnUNetPlans__2d",
    ]
    ignored = 0
    for case in fold["unlabelled"]:
        averaged = np.mean([np.load(folder / f"{case}.npz")["probabilities"] for folder in teacher_dirs], axis=0)
        confident = averaged.max(axis=0) >= MIN_CONFIDENCE
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(student / "labelsTr" / f"{case}.nii.gz")))
        assert np.array_equal(label[~confident], np.full((~confident).sum(), 4))
        assert np.array_equal(label[confident], averaged.argmax(axis=0)[confident])
        ignored += (~confident).sum()
    assert 0 < ignored  # the threshold bites on barely trained teachers

    preprocessed = root / "preprocessed" / student.name
    student_split = json.loads((preprocessed / "splits_final.json").read_text())
    assert len(student_split) == 1 and student_split[0]["val"] == split["val"]
    assert sorted(student_split[0]["train"]) == sorted(split["train"] * LABELLED_WEIGHT + fold["unlabelled"])

    run(["nnUNetv2_train", "28", "2d", "0", "-tr", BASELINE_TRAINER, "-p", "nnUNetPlans", "-device", "cpu"], env)
    predict = ["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(root / "student_test"), "-d", "28"]
    predict += ["-c", "2d", "-tr", BASELINE_TRAINER, "-p", "nnUNetPlans", "-f", "0", "-device", "cpu"]
    run([*predict, "--disable_tta", *SEQUENTIAL_PREDICTION], env)
    for case in test_cases:
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "student_test" / f"{case}.nii.gz")))
        assert set(np.unique(prediction)) <= {0, 1, 2, 3}  # the ignore label is never predicted


@pytest.mark.parametrize(
    "options, problem",
    [
        (["--min-confidence", "1.5"], "--min-confidence 1.5 is outside [0, 1)"),
        (["--labelled-weight", "0"], "--labelled-weight 0 is below 1"),
        (["-f", "7"], "not 7: pass one of them with --fold"),
        (["--teacher", "AutoSAMTrainer"], "is not TRAINER:PLANS"),
        (["--teacher", "SAMCNNTrainer:nnUNetPlans"], "checkpoint_final.pth not found: train the teacher first"),
        (["-p", "nnUNetPlans_missing"], "nnUNetPlans_missing.json not found"),
    ],
)
def test_bad_options_are_refused_in_one_line_before_anything_is_written(fold, options, problem):
    root, env = fold["root"], fold["env"]
    base = {"-f": "0", "--teacher": f"AutoSAMTrainer:{fold['sam_plans']}", "--student-id": "29"}
    for flag, value in zip(options[::2], options[1::2]):
        base[flag] = value
    arguments = [item for pair in base.items() for item in pair]
    refused = run(cli("pseudo-labels", "27", *arguments, "--device", "cpu"), env, check=False)
    assert refused.returncode != 0 and problem in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not list((root / "raw").glob("Dataset029_*")) and not list((root / "results").glob("Dataset029_*"))
