"""`nnunet-autosam doctor`: [ok] for a complete set-up, [FIX] with the fix for each gap, and its exit status."""

from nnunet_autosam.run import doctor
from nnunet_autosam.utilities.nnunet_paths import trainer_dir


def test_doctor_passes_a_complete_set_up_and_names_the_fix_for_each_gap(tmp_path, monkeypatch, capsys):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("nnUNet_extTrainer", str(trainer_dir()))
    monkeypatch.delenv("nnUNet_SAM_weights", raising=False)  # lite_medsam's installed file is enough
    assert doctor.run_doctor(None) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"[ok] nnUNet_extTrainer includes {trainer_dir().resolve()}" in lines
    assert f"[ok] nnUNet_results={tmp_path / 'nnUNet_results'}" in lines
    assert not any(line.startswith("[FIX]") for line in lines)

    monkeypatch.setenv("nnUNet_extTrainer", str(tmp_path))
    monkeypatch.delenv("nnUNet_results")
    assert doctor.run_doctor(None) == 1
    fixes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[FIX]")]
    assert fixes == [
        "[FIX] nnUNet_extTrainer does not include the SAM trainers: "
        "export nnUNet_extTrainer=$(nnunet-autosam trainer-dir)",
        "[FIX] nnUNet_results is not set: export nnUNet_results=/path/to/nnUNet_results (nnU-Net's own set-up)",
    ]
