"""`nnunet-autosam demo` end to end, as a user runs it: synthetic data, every method, a report with a row each."""

import subprocess
import sys

from nnunet_autosam.demo import BANNER, BASELINE_TRAINER, SAM_TRAINERS
from nnunet_autosam.report import method_display_name


def test_demo_runs_every_method_and_reports_each(tmp_path):
    output = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "nnunet_autosam.cli", "demo", "--output", str(output),
                             "--patients", "3", "--labelled", "1", "--epochs", "1"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.startswith(BANNER)
    report_dir = output / "nnUNet_results" / "Dataset027_ACDC" / "autosam_report_test"
    methods = [line.split("|")[1].strip() for line in (report_dir / "report.md").read_text().splitlines()
               if line.startswith("| ")]
    expected = [method_display_name(f"{BASELINE_TRAINER}__nnUNetPlans__2d")] + [
        method_display_name(f"{trainer}__nnUNetPlans_SAM_tiny_128__2d") for trainer in SAM_TRAINERS]
    assert sorted(m for m in methods if m in expected) == sorted(expected)
    assert (report_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((output / "test_predictions").glob("*/fold_0/*.nii.gz"))) == 5 * 4  # 2 test patients x 2 frames
