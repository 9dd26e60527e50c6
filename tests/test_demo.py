"""`nnunet-autosam demo` end to end, as a user runs it: synthetic data, every method, a report with a row each."""

import os
import stat
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest

from nnunet_autosam.evaluation.methods import ZERO_SHOT_PREFIX, method_display_name
from nnunet_autosam.run.demo import DEMO_ENCODER, acdc_patients, banner, raise_first_failure
from nnunet_autosam.utilities.commands import (
    BASELINE_TRAINER,
    SAM_TRAINERS,
    SIMCLR_TRAINER,
    STOCK_PLANS,
    nnunet_command,
)
from nnunet_autosam.utilities.errors import InputError

pytestmark = pytest.mark.slow  # nnU-Net's CLI in subprocesses

# The random tiny encoder keeps this test to minutes; the default (lite_medsam) runs the same commands,
# and tests/test_end_to_end.py runs lite_medsam through the stock CLI.
ENCODER = "tiny"


def test_demo_runs_every_method_and_reports_each(tmp_path):
    """Run with the interpreter's folder off PATH, as `.venv/bin/nnunet-autosam demo` runs without an activated venv."""
    output = tmp_path / "demo"
    interpreter_folder = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != interpreter_folder)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nnunet_autosam.cli",
            "demo",
            "--output",
            str(output),
            "--patients",
            "2",
            "--labelled",
            "1",
            "--epochs",
            "1",
            "--iters",
            "2",
            "--encoder",
            ENCODER,
            "--input-size",
            "128",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH=path),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.startswith(banner(ENCODER))
    assert "SimCLR pretraining is cut to the demo's schedule" in result.stdout

    report_dir = output / "nnUNet_results" / "Dataset901_SyntheticCardiac" / "autosam_report_test"
    rows = {
        cells[0]: cells[1:]
        for cells in (
            [cell.strip() for cell in line.split("|")[1:-1]]
            for line in (report_dir / "report.md").read_text().splitlines()
            if line.startswith("| ")
        )
    }
    methods = list(rows)
    assert (report_dir / "report.md").read_text().startswith("# Dataset901_SyntheticCardiac: few-label results")
    preprocessed = output / "nnUNet_preprocessed" / "Dataset901_SyntheticCardiac"
    sam_plans = next(preprocessed.glob(f"{STOCK_PLANS}_SAM_{ENCODER}_*.json")).stem
    expected = [method_display_name(f"{trainer}__{STOCK_PLANS}__2d") for trainer in (BASELINE_TRAINER, SIMCLR_TRAINER)]
    expected += [method_display_name(f"{trainer}__{sam_plans}__2d") for trainer in SAM_TRAINERS]
    expected += [method_display_name(f"{ZERO_SHOT_PREFIX}zero_shot_{ENCODER}")]
    assert sorted(m for m in methods if m in expected) == sorted(expected)
    for method in expected:  # scored: a number in every column from one fold (one seed), none missing
        *values, seeds, missing = rows[method]
        assert (seeds, missing) == ("1", "-"), (method, rows[method])
        *dice, assd, hd95 = (float(value) for value in values)  # "-" (nothing scored) or "mean ± std" would not parse
        assert all(0 <= value <= 100 for value in dice) and assd >= 0 and hd95 >= 0, (method, rows[method])
    assert (report_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    test_cases = 2 * 2  # 2 test patients x 2 frames
    assert len(list((output / "test_predictions").glob("*/fold_0/*.nii.gz"))) == (2 + len(SAM_TRAINERS)) * test_cases
    assert len(list((output / f"zero_shot_{ENCODER}").glob("*.nii.gz"))) == test_cases
    log = next(
        (output / "nnUNet_results" / "Dataset901_SyntheticCardiac").glob(
            "AutoSAMFullFTTrainer__*/fold_0/training_log_*"
        )
    )
    assert "trains its encoder, so it runs on the fly" in log.read_text()  # the plans' cache is for frozen heads


def test_the_banner_says_what_the_numbers_are_worth():
    assert DEMO_ENCODER == "lite_medsam"
    assert "RANDOM encoder" in banner("tiny") and "say nothing" in banner("tiny")
    assert "real pretrained weights" in banner(DEMO_ENCODER) and "say nothing" not in banner(DEMO_ENCODER)


def test_a_failed_prediction_stops_the_demo_before_the_next_training():
    """Predictions run in the background: a failed one surfaces at the next training, not after all of them."""
    running, succeeded, failed = Future(), Future(), Future()
    succeeded.set_result("")
    raise_first_failure([running, succeeded])
    failed.set_exception(RuntimeError("nnUNetv2_predict failed with exit code 1"))
    with pytest.raises(RuntimeError, match="nnUNetv2_predict failed"):
        raise_first_failure([running, succeeded, failed])


def test_the_acdc_demo_picks_one_patient_per_pathology_group(acdc_dir):
    """`demo --acdc` runs the commands above on these patients; the whole run is too long for the suite."""
    patients = acdc_patients(acdc_dir, 5)
    groups = {
        (acdc_dir / "training" / patient / "Info.cfg").read_text().split("Group:")[1].split()[0] for patient in patients
    }
    assert len(patients) == 5 and groups == {"NOR", "MINF", "DCM", "HCM", "RV"}
    with pytest.raises(InputError, match="the demo needs 500"):
        acdc_patients(acdc_dir, 500)


def _fake_script(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text("#!/bin/sh\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_nnunet_commands_are_found_beside_the_interpreter_first(tmp_path, monkeypatch):
    beside = _fake_script(tmp_path / "venv" / "bin", "nnUNetv2_train")
    on_path = _fake_script(tmp_path / "elsewhere", "nnUNetv2_train")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert nnunet_command("nnUNetv2_train") == str(beside)
    beside.unlink()
    assert nnunet_command("nnUNetv2_train") == str(on_path)


def test_a_missing_nnunet_command_stops_in_one_line_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(InputError) as error:
        nnunet_command("nnUNetv2_train")
    assert "\n" not in error.value.message
    assert "nnUNetv2_train is neither beside" in error.value.message and "pip install 'nnunetv2" in error.value.message
