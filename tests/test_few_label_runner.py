"""benchmarks/few_label_acdc.py end to end on the tiny encoder: every output file, resumption, sharding.

Synthetic ACDC-layout data (5 patients: 1 held out, 1 validation, 3 to draw the labelled one from) and
2 iterations per run: this proves the runner's plumbing, not any method's quality.
"""

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_autosam.data.synthetic import write_synthetic_acdc

pytestmark = pytest.mark.slow  # nnU-Net's CLI in subprocesses

RUNNER = Path(__file__).resolve().parents[1] / "benchmarks" / "few_label_acdc.py"
METHODS = ["nnunet", "autosam", "linear", "zero_shot"]  # the others run the same code with another trainer
SMOKE = [
    "--encoder",
    "tiny",
    "--input-size",
    "128",
    "--holdout",
    "1",
    "--val-patients",
    "1",
    "--budgets",
    "1",
    "--seeds",
    "1",
    "--epochs",
    "1",
    "--iters",
    "2",
    "--methods",
    *METHODS,
]


def load_runner():
    spec = importlib.util.spec_from_file_location("few_label_acdc", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runner(*args):
    result = subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """One finished smoke experiment: (output folder, acdc folder, stdout of the first run)."""
    root = tmp_path_factory.mktemp("few_label")
    acdc = write_synthetic_acdc(root / "acdc", num_patients=5)
    output = root / "run"
    return output, acdc, runner("--acdc", str(acdc), "--output", str(output), *SMOKE)


def test_every_run_finishes_with_its_predictions(experiment):
    output, _, stdout = experiment
    assert "4 runs, 0 done before, 4 to run" in stdout
    prepared = json.loads((output / "prepared.json").read_text())
    assert prepared["batch_size"] == 4 and prepared["stock_plans"] == "nnUNetPlans_batch4"
    test_cases = sorted(p.name.replace("_0000", "") for p in (output / "nnUNet_raw/Dataset027_ACDC/imagesTs").iterdir())
    assert len(test_cases) == 2  # the held-out patient's two frames
    for method in METHODS:
        name = method if method == "zero_shot" else f"{method}_fold0"
        record = json.loads((output / "runs" / f"{name}.json").read_text())
        assert record["wall_s"] > 0 and record["device"] == "cpu"
    predictions = sorted((output / "test_predictions").iterdir())
    assert len(predictions) == 3
    for folder in predictions:
        assert sorted(p.name for p in (folder / "fold_0").glob("*.nii.gz")) == test_cases
    assert sorted(p.name for p in (output / "zero_shot" / "zero_shot_tiny").glob("*.nii.gz")) == test_cases


def test_a_rerun_does_nothing_twice_and_an_interrupted_run_restarts_cleanly(experiment):
    output, acdc, _ = experiment
    log = (output / "commands.log").read_text()
    markers = {path: path.stat().st_mtime_ns for path in (output / "runs").glob("*.json")}
    assert "4 runs, 4 done before, 0 to run" in runner("--acdc", str(acdc), "--output", str(output), *SMOKE)
    assert (output / "commands.log").read_text() == log
    assert {path: path.stat().st_mtime_ns for path in (output / "runs").glob("*.json")} == markers

    (output / "runs" / "linear_fold0.json").unlink()  # as if killed before it finished
    predictions = next((output / "test_predictions").glob("SAMLinearTrainer__*")) / "fold_0"
    (predictions / "left_over.nii.gz").write_bytes(b"partial")
    assert "1 to run" in runner("--acdc", str(acdc), "--output", str(output), *SMOKE)
    assert not (predictions / "left_over.nii.gz").exists()
    new_commands = (output / "commands.log").read_text()[len(log) :].splitlines()
    assert [line.split()[0] for line in new_commands] == ["nnUNetv2_train", "nnUNetv2_predict"]
    assert "-tr SAMLinearTrainer" in new_commands[0]


def test_publish_writes_a_numeric_row_per_method(experiment, tmp_path):
    output, acdc, _ = experiment
    published = tmp_path / "published"
    runner("--acdc", str(acdc), "--output", str(output), *SMOKE, "--publish", str(published))
    assert sorted(p.name for p in published.iterdir()) == [
        "commands.md",
        "plot.png",
        "table.csv",
        "table.md",
        "timings.json",
    ]
    with open(published / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4  # three trained methods and zero-shot, one budget
    for row in rows:
        assert row["n_seeds"] == "1" and not row["missing_folds"]
        for column in ("mean_Dice_mean", "Dice_LV_mean", "ASSD_mm_mean", "HD95_mm_mean"):
            assert float(row[column]) >= 0, (row["method"], column)
    table = (published / "table.md").read_text()
    assert "every trained method 1 x 2 iterations at batch 4" in table
    assert str(output) not in table
    assert "## Claims at 1 labelled patient, as measured" in table
    assert (published / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    commands = (published / "commands.md").read_text()
    assert "nnunet-autosam convert-acdc" in commands and "--holdout 1" in commands
    assert "nnUNetv2_train 27 2d 0 -tr AutoSAMTrainer -p nnUNetPlans_SAM_tiny_128 -device cpu" in commands
    assert "export AUTOSAM_NUM_EPOCHS=1" in commands
    assert len(json.loads((published / "timings.json").read_text())["runs"]) == 4


def test_shards_split_the_runs_without_overlap_and_by_cost(tmp_path):
    module = load_runner()
    shares = []
    for index in range(3):
        args = module.parse_args(["--output", str(tmp_path / "unused"), "--shard", f"{index}/3"])
        experiment = module.Experiment(args)
        runs = [module.Run(method, fold) for method in ("nnunet", "autosam", "linear") for fold in range(6)]
        runs += [
            module.Run("cnn", 0),
            module.Run("cnn", 3),
            module.Run("ftall", 0),
            module.Run("ftall", 3),
            module.Run("zero_shot"),
        ]
        shares.append(experiment.shard(runs))
    names = [run.name for share in shares for run in share]
    assert sorted(names) == sorted(run.name for run in runs) and len(set(names)) == len(names)
    costs = [sum(run.cost(experiment.schedule) for run in share) for share in shares]
    assert max(costs) < 1.5 * min(costs)
    for share in shares:  # cheap runs first: no run over half an hour before a cheaper one; then cheapest first
        long_costs = [
            run.cost(experiment.schedule) for run in share if run.cost(experiment.schedule) > module.LONG_RUN_S
        ]
        assert [run.cost(experiment.schedule) > module.LONG_RUN_S for run in share] == sorted(
            run.cost(experiment.schedule) > module.LONG_RUN_S for run in share
        )
        assert long_costs == sorted(long_costs)
    whole = module.Experiment(module.parse_args(["--output", str(tmp_path / "unused")])).shard(runs)
    assert [run.name for run in whole[-4:]] == ["cnn_fold0", "cnn_fold3", "ftall_fold0", "ftall_fold3"]


@pytest.mark.parametrize(
    "autosam, nnunet, verdicts",
    [
        ("37.7", "3.9", ("**fails** (37.7 over 3 of 3 seeds)", "holds (37.7 against 3.9)")),
        ("39.0", "45.2", ("holds (39.0 over 3 of 3 seeds)", "**fails** (39.0 against 45.2)")),
    ],
)
def test_the_table_says_whether_each_claim_holds(tmp_path, autosam, nnunet, verdicts):
    module = load_runner()
    experiment = module.Experiment(module.parse_args(["--output", str(tmp_path / "unused")]))
    report = tmp_path / "report.csv"
    rows = [
        ("1", "nnUNetTrainerEnvSchedule__nnUNetPlans_batch4__2d", nnunet),
        ("1", "AutoSAMTrainer__nnUNetPlans_SAM_lite_medsam_256__2d", autosam),
        ("5", "AutoSAMTrainer__nnUNetPlans_SAM_lite_medsam_256__2d", "70.9"),
    ]
    report.write_text("budget,folder,n_seeds,mean_Dice_mean\n" + "".join(f"{b},{f},3,{d}\n" for b, f, d in rows))
    lines = experiment.claims(report).splitlines()
    assert lines[0] == "## Claims at 1 labelled patient, as measured"
    assert lines[2].endswith(f"at least 39: {verdicts[0]}") and lines[3].endswith(verdicts[1])
    report.write_text("budget,folder,n_seeds,mean_Dice_mean\n" + "".join(f"{b},{f},3,{d}\n" for b, f, d in rows[1:]))
    assert "Not measured" in experiment.claims(report)


def test_plan_lists_every_run_once_and_trains_nothing(experiment):
    output, acdc, _ = experiment
    before = sorted(path.name for path in (output / "runs").iterdir())
    printed = runner("--acdc", str(acdc), "--output", str(output), *SMOKE, "--plan", "--shard", "0/2")
    lines = [line for line in printed.splitlines() if line.startswith("shard ")]
    assert [line.split(":")[0] for line in lines] == ["shard 0/2", "shard 1/2"]
    planned = [name for line in lines for name in line.split(": ", 2)[2].split()]
    assert sorted(planned) == sorted(name[: -len(".json")] for name in before)
    assert sorted(path.name for path in (output / "runs").iterdir()) == before


def test_test_from_puts_an_official_testing_folder_beside_training(tmp_path, monkeypatch):
    """--test-from: the ACDC training set plus an official testing/ folder, converted as one dataset."""
    from nnunet_autosam.data.conversion import convert_acdc

    acdc = write_synthetic_acdc(tmp_path / "acdc", num_patients=3)
    official = write_synthetic_acdc(tmp_path / "official", num_patients=0, num_testing=2, seed=1) / "testing"
    module = load_runner()
    args = module.parse_args(["--acdc", str(acdc), "--output", str(tmp_path / "run"), "--test-from", str(official)])
    source = module.Experiment(args).source()
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    target = convert_acdc(source)
    assert sorted(p.name for p in (target / "labelsTs").iterdir()) == [
        f"patient{number}_frame{frame}.nii.gz" for number in (101, 102) for frame in ("01", "10")
    ]
    assert len(list((target / "labelsTr").iterdir())) == 6
