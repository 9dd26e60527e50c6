"""Few-label splits on a dataset converted from 15 real ACDC patients (3 per pathology group)."""

import argparse
import json

import pytest

from nnunet_autosam.data import splits
from nnunet_autosam.data.conversion import convert_acdc, read_info_cfg
from nnunet_autosam.data.splits import make_few_label_splits, write_splits
from nnunet_autosam.utilities.errors import InputError

PER_GROUP = 3


def first_patients_per_group(acdc_dir, per_group):
    """The first ``per_group`` patients of each pathology group, read from their Info.cfg."""
    chosen = {}
    for folder in sorted((acdc_dir / "training").glob("patient???")):
        group = read_info_cfg(folder / "Info.cfg", "training")["Group"]
        chosen.setdefault(group, [])
        if len(chosen[group]) < per_group:
            chosen[group].append(folder.name)
    return chosen


@pytest.fixture
def acdc_groups(acdc_dir, nnunet_env):
    """Convert 15 patients to Dataset027_ACDC; return group -> patient ids."""
    groups = first_patients_per_group(acdc_dir, PER_GROUP)
    convert_acdc(acdc_dir, patients=[p for patients in groups.values() for p in patients])
    return groups


@pytest.fixture
def table(acdc_groups):
    return make_few_label_splits(27, [1, 5], seeds=3, val_patients=5)


def group_of(groups, patient):
    return next(group for group, patients in groups.items() if patient in patients)


def test_one_fold_per_budget_and_seed_with_patient_counts(table):
    assert table["dataset"] == "Dataset027_ACDC"
    assert [(f["fold"], f["budget"], f["seed"]) for f in table["folds"]] == [
        (0, 1, 0),
        (1, 1, 1),
        (2, 1, 2),
        (3, 5, 0),
        (4, 5, 1),
        (5, 5, 2),
    ]
    for fold in table["folds"]:
        assert len(fold["train_patients"]) == fold["budget"]
        assert len(fold["train_cases"]) == 2 * fold["budget"]
    assert len(table["val_patients"]) == 5
    assert len(table["folds"][0]["val_cases"]) == 10


def test_frames_of_a_patient_stay_together(table):
    for fold in table["folds"]:
        train_patients = {case.split("_")[0] for case in fold["train_cases"]}
        val_patients = {case.split("_")[0] for case in fold["val_cases"]}
        assert train_patients == set(fold["train_patients"])
        assert val_patients == set(table["val_patients"])
        assert not train_patients & val_patients


def test_validation_set_is_shared_and_stratified(table, acdc_groups):
    assert len({tuple(fold["val_cases"]) for fold in table["folds"]}) == 1
    assert sorted(group_of(acdc_groups, p) for p in table["val_patients"]) == sorted(acdc_groups)


def test_budget_of_five_takes_one_patient_per_group(table, acdc_groups):
    for fold in table["folds"][3:]:
        assert sorted(group_of(acdc_groups, p) for p in fold["train_patients"]) == sorted(acdc_groups)


def test_same_arguments_same_table_and_seeds_differ(table):
    assert make_few_label_splits("Dataset027_ACDC", [1, 5], seeds=3, val_patients=5) == table
    for budget in (1, 5):
        draws = {tuple(f["train_patients"]) for f in table["folds"] if f["budget"] == budget}
        assert len(draws) > 1


def test_small_dataset_shrinks_validation_and_rejects_large_budgets(acdc_groups):
    table = make_few_label_splits(27, [10], seeds=1)
    assert len(table["val_patients"]) == 5
    with pytest.raises(InputError, match="budget 15 exceeds the 14 patients"):
        make_few_label_splits(27, [15], seeds=1)


def test_written_files_agree(table, nnunet_env):
    target = write_splits(table)
    assert target == nnunet_env["nnUNet_preprocessed"] / "Dataset027_ACDC" / "splits_final.json"
    splits = json.loads(target.read_text())
    saved_table = json.loads(target.with_name("few_label_splits.json").read_text())
    assert saved_table == table
    assert splits == [{"train": f["train_cases"], "val": f["val_cases"]} for f in table["folds"]]


def test_different_existing_splits_need_force(table, nnunet_env):
    target = write_splits(table)
    write_splits(table)  # same content: nothing to refuse
    nnunet_default = [{"train": ["patient001_frame01"], "val": ["patient002_frame01"]}]
    target.write_text(json.dumps(nnunet_default))
    with pytest.raises(InputError, match="--force"):
        write_splits(table)
    assert json.loads(target.read_text()) == nnunet_default
    write_splits(table, force=True)
    assert len(json.loads(target.read_text())) == 6


def test_unknown_dataset_is_refused(nnunet_env):
    with pytest.raises(InputError, match="convert it first"):
        make_few_label_splits(99, [1], seeds=1)


def test_other_datasets_treat_each_case_as_a_patient(nnunet_env):
    raw = nnunet_env["nnUNet_raw"] / "Dataset042_Toy"
    (raw / "labelsTr").mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    for index in range(10):
        (raw / "labelsTr" / f"toy_{index:03d}.nii.gz").touch()
    table = make_few_label_splits(42, [2], seeds=2, val_patients=3)
    assert table["dataset"] == "Dataset042_Toy"
    assert len(table["val_patients"]) == 3
    for fold in table["folds"]:
        assert fold["train_cases"] == fold["train_patients"] and len(fold["train_cases"]) == 2
        assert not set(fold["train_cases"]) & set(fold["val_cases"])


def run_splits_command(argv):
    """Parse and run ``nnunet-autosam splits`` in-process (the CLI itself is covered by test_conversion)."""
    parser = argparse.ArgumentParser()
    splits.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_command_prints_the_table(acdc_groups, nnunet_env, capsys):
    assert run_splits_command(["splits", "27", "--labelled", "1", "5", "--seeds", "2", "--val-patients", "5"]) is None
    output = capsys.readouterr().out
    assert "fold  budget  seed  training patients" in output
    assert (nnunet_env["nnUNet_preprocessed"] / "Dataset027_ACDC" / "splits_final.json").is_file()
    assert (
        len(json.loads((nnunet_env["nnUNet_preprocessed"] / "Dataset027_ACDC" / "splits_final.json").read_text())) == 4
    )
