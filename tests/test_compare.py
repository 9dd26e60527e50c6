"""`nnunet-autosam compare` end to end on a dataset that is not ACDC-shaped, on the tiny encoder.

Three foreground classes, 40 x 56 slices, two cases per patient grouped by a pattern, no imagesTs (the test
set is held out): 4 patients, 1 held out, 1 for validation, the labelled one drawn from the other 2. Two
and four steps on the ladder, at two iterations per epoch: this proves the command's plumbing, not any method's
quality.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from nnunet_autosam.cli import build_parser
from nnunet_autosam.comparison import protocol
from nnunet_autosam.comparison.runs import Experiment
from nnunet_autosam.data.synthetic import write_synthetic_raw_dataset

pytestmark = pytest.mark.slow

METHODS = ["nnunet", "linear", "pseudo", "zero_shot"]  # the other heads run the same code with another trainer
VARIANTS = ["linear:0:1", "linear:0.5:2"]  # the student of the linear head's labels: every voxel; the sure ones
SMOKE = [
    "--holdout",
    "1",
    "--group-pattern",
    r"(patient\d+)_",
    "--encoder",
    "tiny",
    "--input-size",
    "64",
    "--val-patients",
    "1",
    "--budgets",
    "1",
    "--seeds",
    "1",
    "--ladder",
    "2",
    "4",
    "--plateau",
    "100",  # 4 steps add less than 100 points to 2 steps' Dice whatever the blobs: S is 2, and seed 0 trains both
    "--iters",
    "2",
    "--methods",
    *METHODS,
    "--pseudo-variants",
    *VARIANTS,
]
DERIVED = "Dataset902_SyntheticBlobs"


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """One finished smoke comparison: (compare's command line, output folder, stdout, user's dataset, snapshot)."""
    root = tmp_path_factory.mktemp("compare")
    source = write_synthetic_raw_dataset(root / "user_raw", num_patients=4, cases_per_patient=2, shape=(4, 40, 56))
    env = dict(os.environ, nnUNet_raw=str(root / "user_raw"), OMP_NUM_THREADS="1")
    for name in ("nnUNet_preprocessed", "nnUNet_results"):
        env.pop(name, None)
    output = root / "out"
    before = snapshot(source)

    def compare(*extra):
        command = [sys.executable, "-m", "nnunet_autosam.cli", "compare", "402", "--output", str(output), *SMOKE]
        result = subprocess.run([*command, *extra], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    return compare, output, compare(), source, before


def cases(folder):
    return sorted(p.name.replace("_0000.nii.gz", "").replace(".nii.gz", "") for p in folder.glob("*.nii.gz"))


def test_every_run_finishes_and_a_patient_never_straddles_train_validation_and_test(experiment):
    _, output, stdout, source, before = experiment
    assert "4 lines: " in stdout
    assert snapshot(source) == before  # the user's dataset is only read
    derived = output / "nnUNet_raw" / DERIVED
    test_cases = cases(derived / "labelsTs")
    assert cases(derived / "imagesTs") == test_cases and len(test_cases) == 2
    test_patient = {case.split("_")[0] for case in test_cases}
    assert len(test_patient) == 1  # both cases of the held-out patient, and only those
    table = json.loads((output / "nnUNet_preprocessed" / DERIVED / "few_label_splits.json").read_text())
    (fold,) = table["folds"]
    sides = [{case.split("_")[0] for case in fold[key]} for key in ("train_cases", "val_cases")] + [test_patient]
    assert all(len(side) == 1 for side in sides) and len(set.union(*sides)) == 3
    assert len(fold["train_cases"]) == len(fold["val_cases"]) == 2
    splits = json.loads((output / "nnUNet_preprocessed" / DERIVED / "splits_final.json").read_text())
    assert splits == [{"train": fold["train_cases"], "val": fold["val_cases"]}]
    preprocessed = {
        p.name.split(".")[0] for p in (output / "nnUNet_preprocessed" / DERIVED / "nnUNetPlans_2d").iterdir()
    }
    assert not preprocessed & set(test_cases)  # nnU-Net never planned on the test set
    for run in ("nnunet_fold0", "linear_fold0", "pseudo_fold0", "zero_shot"):
        assert json.loads((output / "runs" / f"{run}.json").read_text())["wall_s"] > 0
    for folder in (output / "runs" / "test_predictions").iterdir():
        assert cases(folder / "fold_0") == test_cases
    assert cases(output / "zero_shot" / "zero_shot_tiny") == test_cases


def test_seed_zero_climbs_the_ladder_and_the_test_run_uses_the_steps_its_validation_chose(experiment):
    _, output, _, _, _ = experiment
    commands = (output / "commands.log").read_text().splitlines()
    for method, trainer in (("nnunet", "nnUNetTrainerEnvSchedule"), ("linear", "SAMLinearTrainer")):
        dice = {}
        for steps in (2, 4):
            record = json.loads((output / "runs" / "training" / f"{method}_fold0_{steps}steps.json").read_text())
            dice[steps] = record["val_dice"]
            assert 0 <= dice[steps] <= 100 and record["train_s"] > 0
            assert list(record["validation_curve"]) == [str(2 * (epoch + 1)) for epoch in range(steps // 2)]
            # Every such line (the rerun test, in any order, retrains one on purpose).
            trains = [c for c in commands if f"-tr {trainer} " in c and f"/steps_{steps} nnUNetv2_train" in c]
            schedule = f"AUTOSAM_NUM_EPOCHS={steps // 2} AUTOSAM_ITERS_PER_EPOCH=2 "
            assert trains and all(c.startswith(schedule) for c in trains)
        test = json.loads((output / "runs" / f"{method}_fold0.json").read_text())
        assert (test["steps"], test["plateau_shown"], test["val_dice"]) == (2, True, dice[2])
        assert test["training"] == f"{method}_fold0_2steps"
        (folder,) = (output / "nnUNet_results" / "steps_2" / DERIVED).glob(f"{trainer}__*")
        assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
        predicts = [c for c in commands if "nnUNetv2_predict" in c and f"-tr {trainer} " in c]
        assert predicts and all(f"nnUNet_results={output}/nnUNet_results/steps_2 " in c for c in predicts)
        chosen = output / "nnUNet_results" / "chosen" / DERIVED / folder.name
        assert (chosen / "fold_0").resolve() == (folder / "fold_0").resolve() and (chosen / "plans.json").is_file()


def student_dataset(output, text):
    """(its record under runs/students, its DatasetXXX_NAME) of fold 0's student of pseudo-label variant ``text``."""
    key = protocol.PseudoVariant.parse(text).key
    record = json.loads((output / "runs" / "students" / f"SyntheticBlobs_{key}_fold0.json").read_text())
    return record, f"Dataset{record['dataset_id']:03d}_{record['run']}"


def test_the_student_learns_from_the_unlabelled_patient_only_and_its_variant_is_chosen_on_validation(experiment):
    _, output, _, _, _ = experiment
    (fold,) = json.loads((output / "nnUNet_preprocessed" / DERIVED / "few_label_splits.json").read_text())["folds"]
    held_out = set(cases(output / "nnUNet_raw" / DERIVED / "labelsTs"))
    dice = {}
    for text in VARIANTS:
        record, name = student_dataset(output, text)
        made = json.loads((output / "nnUNet_raw" / name / "pseudo_labels.json").read_text())
        teachers = [teacher.split("__")[0] for teacher in made["teachers"]]
        assert (record["variant"], record["unlabelled"], teachers) == (text, 2, ["SAMLinearTrainer"])
        ignored = 100 * sum(made["ignored_fraction"].values()) / 2  # the diagnostic, kept in the record
        assert record["ignored_percent"] == pytest.approx(ignored, abs=0.01)
        assert ignored == 0 or protocol.PseudoVariant.parse(text).min_confidence > 0
        assert record["pseudo_label_dice"] is None or 0 <= record["pseudo_label_dice"] <= 100
        unlabelled = set(made["unlabelled"])  # the patient neither labelled, validated on nor held out: 2 cases
        assert len({case.split("_")[0] for case in unlabelled}) == 1 and len(unlabelled) == 2
        assert not unlabelled & (held_out | set(fold["train_cases"]) | set(fold["val_cases"]))
        (split,) = json.loads((output / "nnUNet_preprocessed" / name / "splits_final.json").read_text())
        assert split["val"] == fold["val_cases"]  # scored on the comparison's own validation, with real labels
        weight = protocol.PseudoVariant.parse(text).labelled_weight
        assert sorted(split["train"]) == sorted(fold["train_cases"] * weight + made["unlabelled"])
        training = output / "runs" / "training" / f"{protocol.PseudoVariant.parse(text).key}_fold0_2steps.json"
        dice[text] = json.loads(training.read_text())["val_dice"]
    chosen = max(VARIANTS, key=dice.__getitem__)  # the first listed on a tie, as the comparison breaks it
    key = protocol.PseudoVariant.parse(chosen).key
    test = json.loads((output / "runs" / "pseudo_fold0.json").read_text())
    assert (test["variant"], test["steps"], test["training"]) == (chosen, 2, f"{key}_fold0_2steps")
    climbed = {path.name for path in (output / "runs" / "training").glob("pseudo_*_4steps.json")}
    assert climbed == {f"{key}_fold0_4steps.json"}  # only the chosen variant climbs the ladder
    (trained,) = (output / "nnUNet_results" / "steps_2" / student_dataset(output, chosen)[1]).glob(
        "nnUNetTrainerPseudoLabelStudent__*"
    )
    link = output / "nnUNet_results" / "chosen" / DERIVED / trained.name / "fold_0"
    assert link.resolve() == (trained / "fold_0").resolve()  # the report scores the student as the fold's model


def new_commands(output, log):
    """The command names logged after ``log`` (each line: the variables, then the command)."""
    lines = (output / "commands.log").read_text()[len(log) :].splitlines()
    return [line.split(" nnUNet_results=")[1].split()[1] for line in lines]


def test_a_rerun_does_nothing_twice_and_an_interrupted_run_restarts_cleanly(experiment):
    compare, output, _, _, _ = experiment
    log = (output / "commands.log").read_text()
    markers = {path: path.stat().st_mtime_ns for path in (output / "runs").rglob("*.json")}
    compare()
    assert (output / "commands.log").read_text() == log
    assert {path: path.stat().st_mtime_ns for path in (output / "runs").rglob("*.json")} == markers

    (output / "runs" / "linear_fold0.json").unlink()  # as if killed while predicting the test set
    predictions = next((output / "runs" / "test_predictions").glob("SAMLinearTrainer__*")) / "fold_0"
    (predictions / "left_over.nii.gz").write_bytes(b"partial")
    compare()
    assert not (predictions / "left_over.nii.gz").exists()
    assert new_commands(output, log) == ["nnUNetv2_predict"]

    held_out = cases(predictions)
    next(predictions.glob("*.nii.gz")).unlink()  # a test prediction lost, its record kept
    log = (output / "commands.log").read_text()
    compare()
    assert new_commands(output, log) == ["nnUNetv2_predict"] and cases(predictions) == held_out

    record = output / "runs" / "linear_fold0.json"  # tested at other steps, as before a longer ladder
    steps = json.loads(record.read_text())["steps"]
    record.write_text(json.dumps(dict(json.loads(record.read_text()), steps=2 * steps)))
    log = (output / "commands.log").read_text()
    compare()
    assert new_commands(output, log) == ["nnUNetv2_predict"] and json.loads(record.read_text())["steps"] == steps

    steps = json.loads((output / "runs" / "nnunet_fold0.json").read_text())["steps"]
    (folder,) = (output / "nnUNet_results" / f"steps_{steps}" / DERIVED).glob("nnUNetTrainerEnvSchedule__*")
    fold_dir = folder / "fold_0"

    def kill_while_training(keep_checkpoint):
        """Undo the end of fold 0's training: its records, validation and final checkpoint."""
        (output / "runs" / "training" / f"nnunet_fold0_{steps}steps.json").unlink()
        (output / "runs" / "nnunet_fold0.json").unlink()
        shutil.rmtree(fold_dir / "validation")
        final = fold_dir / "checkpoint_final.pth"
        if keep_checkpoint:  # the checkpoint of its first epoch, as the periodic save leaves it
            checkpoint = torch.load(final, weights_only=False)
            torch.save(dict(checkpoint, current_epoch=0), fold_dir / "checkpoint_latest.pth")
        final.unlink()
        (fold_dir / "left_over.txt").write_text("partial")
        return (output / "commands.log").read_text()

    log = kill_while_training(keep_checkpoint=True)
    compare()
    assert (fold_dir / "left_over.txt").exists()  # resumed in place, not wiped
    logged = (output / "commands.log").read_text()[len(log) :].splitlines()
    assert new_commands(output, log) == ["nnUNetv2_train", "nnUNetv2_predict"] and logged[0].endswith(" --c")
    assert len(list(fold_dir.glob("training_log_*.txt"))) == 2
    record = json.loads((output / "runs" / "training" / f"nnunet_fold0_{steps}steps.json").read_text())
    assert record["resumed"] and (fold_dir / "validation" / "summary.json").is_file()

    (fold_dir / "checkpoint_latest.pth").unlink(missing_ok=True)
    log = kill_while_training(keep_checkpoint=False)
    compare()
    assert not (fold_dir / "left_over.txt").exists()  # nothing to resume from: wiped and trained again
    logged = (output / "commands.log").read_text()[len(log) :].splitlines()
    assert new_commands(output, log) == ["nnUNetv2_train", "nnUNetv2_predict"] and " --c" not in logged[0]

    # runs/ alone on a new machine: a tested fold stands on the test predictions that came with it
    for trained in (output / "nnUNet_results").glob(f"steps_*/{DERIVED}/nnUNetTrainerEnvSchedule__*"):
        shutil.rmtree(trained)
    log = (output / "commands.log").read_text()
    assert plan_entries(compare("--plan"))["nnunet_budget1"].endswith(", 1 of 1 seeds tested, 0.0 h left")
    compare()
    assert new_commands(output, log) == []
    # ... but one whose test prediction had not finished there is trained again, to predict with
    (output / "runs" / "nnunet_fold0.json").unlink()
    left = plan_entries(compare("--plan"))
    assert left["nnunet_budget1"].endswith(" h left") and not left["nnunet_budget1"].endswith(" 0.0 h left")
    assert left["linear_budget1"].endswith(", 0.0 h left")
    ladder_record = (output / "runs" / "training" / f"nnunet_fold0_{steps}steps.json").read_text()
    compare()
    assert new_commands(output, log) == ["nnUNetv2_train", "nnUNetv2_predict"]
    assert f"steps_{steps} " in (output / "commands.log").read_text()[len(log) :].splitlines()[0]
    # the ladder's record stands; the second training has its own, which the test record names
    assert (output / "runs" / "training" / f"nnunet_fold0_{steps}steps.json").read_text() == ladder_record
    retrained = json.loads((output / "runs" / "training" / f"nnunet_fold0_{steps}steps_retrained.json").read_text())
    test = json.loads((output / "runs" / "nnunet_fold0.json").read_text())
    assert test["training"] == retrained["run"] and test["val_dice"] == retrained["val_dice"]


def test_publish_writes_every_file_with_the_datasets_own_names(experiment, tmp_path):
    """Published from runs/ alone, as on a machine that did not train: no model, no student dataset, no log."""
    compare, output, _, _, _ = experiment
    shutil.rmtree(output / "nnUNet_results")
    for student in (output / "nnUNet_raw").glob("Dataset6*"):
        shutil.rmtree(student)
    published = tmp_path / "published"
    compare("--publish", str(published))
    assert sorted(p.name for p in published.iterdir()) == sorted(
        ["commands.md", "plot.png", "table.csv", "table.md", "timings.json", "validation_curves.csv"]
        + ["validation_curves.png"]
    )
    with open(published / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4  # three trained methods and zero-shot, one budget
    for row in rows:
        assert row["n_seeds"] == "1" and not row["missing_folds"]
        for column in ("Dice_blob1_mean", "Dice_blob2_mean", "Dice_blob3_mean", "mean_Dice_mean", "HD95_mm_mean"):
            assert float(row[column]) >= 0, (row["method"], column)
    table = (published / "table.md").read_text()
    assert "# Few-label SyntheticBlobs on `tiny`: test set of 1 patient\n" in table
    assert "derived from Dataset402_SyntheticBlobs; classes (dataset.json): blob1, blob2, blob3" in table
    assert "| method | blob1 | blob2 | blob3 | mean Dice |" in table and "ACDC" not in table
    assert "batch 4, 2 iterations per epoch; each method's steps chosen on validation from the ladder 2 4" in table
    assert "| nnunet | 1 | 2: " in table and str(output) not in table
    test = json.loads((output / "runs" / "pseudo_fold0.json").read_text())
    assert f"| pseudo ({test['variant']}) | 1 | 2: " in table and f"{test['variant']} " in table
    assert f"- 1 labelled patient: nnU-Net + SAM pseudo-labels ({test['variant']}; " in table
    assert "above labelled-only nnU-Net (" in table and "above its teacher linear (" in table
    assert "(chosen)" in table and "## Pseudo-labels against the real labels" in table
    for image in ("plot.png", "validation_curves.png"):
        assert (published / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(published / "validation_curves.csv", newline="") as f:
        curves = list(csv.DictReader(f))
    assert {row["method"] for row in curves} == {"linear", "nnunet", "pseudo"}
    assert {row["step"] for row in curves} <= {"2", "4"}  # one point per epoch of 2 iterations
    assert all(0 <= float(row["pseudo_dice"]) <= 1 for row in curves)
    commands = (published / "commands.md").read_text()
    assert "nnunet-autosam holdout" in commands and "--count 1 --group-pattern '(patient\\d+)_'" in commands
    assert "nnUNetv2_train 902 2d 0 -tr SAMLinearTrainer -p nnUNetPlans_SAM_tiny_64 -device cpu" in commands
    assert "nnunet-autosam compare 402 --output OUTPUT --holdout 1" in commands
    timings = json.loads((published / "timings.json").read_text())
    # 2 rungs of nnU-Net (one trained again) and linear, each student variant at 2 steps, the chosen one at 4
    assert len(timings["runs"]) == 4 and len(timings["trainings"]) == 8 and timings["machine"] and "code" in timings
    assert [record["wall_s"] > 0 for record in timings["student_datasets"]] == [True, True]


def plan_entries(stdout):
    """--plan's lines -> {line name: where it stands and what is left}."""
    lines = [line for line in stdout.splitlines() if line.startswith("shard ")]
    entries = [entry for line in lines for entry in line.split(" h left: ", 1)[1].split("; ")]
    return {entry.split(" (")[0]: entry.split(" (", 1)[1].rstrip(")") for entry in entries}


def test_plan_lists_every_line_once_with_where_it_stands_and_trains_nothing(experiment):
    compare, output, _, _, _ = experiment
    before = sorted(str(path) for path in (output / "runs").rglob("*"))
    stdout = compare("--plan", "--shard", "0/2")
    lines = [line for line in stdout.splitlines() if line.startswith("shard ")]
    assert [line.split(":")[0] for line in lines] == ["shard 0/2", "shard 1/2"]
    assert all(", 0.0 h left: " in line for line in lines)  # every line has finished
    entries = plan_entries(stdout)
    assert sorted(entries) == ["linear_budget1", "nnunet_budget1", "pseudo_budget1", protocol.ZERO_SHOT]
    assert entries["nnunet_budget1"].startswith("S = ") and entries["nnunet_budget1"].endswith(
        ", 1 of 1 seeds tested, 0.0 h left"
    )
    assert sorted(str(path) for path in (output / "runs").rglob("*")) == before


def test_what_is_left_is_costed_at_this_machines_own_speed(experiment):
    _, output, _, _, _ = experiment
    experiment_here = Experiment(build_parser().parse_args(["compare", "402", "--output", str(output), *SMOKE]))
    training = output / "runs" / "training"
    longest = json.loads((training / "nnunet_fold0_4steps.json").read_text())
    elsewhere = training / "nnunet_fold7_8steps.json"  # came with runs/ from another machine: not this one's speed
    elsewhere.write_text(json.dumps(dict(longest, steps=8, train_s=1e6, machine="another machine")))
    try:
        assert experiment_here.measured_step_s("nnunet") == pytest.approx(longest["train_s"] / 4)
    finally:
        elsewhere.unlink()
    assert experiment_here.measured_step_s("cnn") is None  # never trained here: the protocol's cost stands
