"""Units that stay together, test sets held out of any dataset, and the checks compare makes before it writes.

Quick: small synthetic datasets, no training. The ACDC case checks that ``convert-acdc`` then the generic
holdout and splits give the published protocol's test patients and folds.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_autosam.comparison.dataset import plan_dataset
from nnunet_autosam.comparison.holdout import derive_holdout
from nnunet_autosam.data.conversion import convert_acdc
from nnunet_autosam.data.grouping import Grouping, units_from_grouping
from nnunet_autosam.data.splits import make_few_label_splits
from nnunet_autosam.data.synthetic import write_synthetic_acdc, write_synthetic_raw_dataset
from nnunet_autosam.utilities.errors import InputError

PATTERN = r"(patient\d+)_"
# The 20 test patients of results/acdc_lite_medsam (convert-acdc --holdout 20 on the 100 ACDC training patients).
PUBLISHED_TEST_PATIENTS = (
    "patient002 patient003 patient007 patient016 patient022 patient026 patient037 patient038 patient044 "
    "patient047 patient055 patient059 patient067 patient070 patient074 patient080 patient081 patient087 "
    "patient088 patient099"
).split()


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def cases_in(folder: Path) -> set:
    return (
        {p.name[: -len(".nii.gz")].removesuffix("_0000") for p in folder.glob("*.nii.gz")} if folder.is_dir() else set()
    )


def test_a_pattern_or_a_map_groups_cases_into_units(tmp_path):
    cases = ["patient01_a", "patient01_b", "patient02_a", "x_patient03_b"]
    units = units_from_grouping(cases, Grouping(pattern=PATTERN))
    assert units == {
        "patient01": (None, ["patient01_a", "patient01_b"]),
        "patient02": (None, ["patient02_a"]),
        "patient03": (None, ["x_patient03_b"]),
    }
    assert units_from_grouping(cases, Grouping()) == {case: (None, [case]) for case in cases}
    by_case, by_unit = tmp_path / "by_case.json", tmp_path / "by_unit.json"
    by_case.write_text(json.dumps({case: case[-1] for case in cases}))
    by_unit.write_text(json.dumps({"a": cases[::2], "b": cases[1::2]}))
    expected = {"a": (None, ["patient01_a", "patient02_a"]), "b": (None, ["patient01_b", "x_patient03_b"])}
    assert units_from_grouping(cases, Grouping(map_file=by_case)) == expected
    assert units_from_grouping(cases, Grouping(map_file=by_unit)) == expected
    with pytest.raises(InputError, match="case other does not match --group-pattern"):
        units_from_grouping([*cases, "other"], Grouping(pattern=PATTERN))
    with pytest.raises(InputError, match=r"names no unit for 1 cases \(e.g. other\)"):
        units_from_grouping([*cases, "other"], Grouping(map_file=by_unit))


def test_holdout_moves_whole_units_to_the_test_set_and_leaves_the_source_alone(nnunet_env, tmp_path):
    source = write_synthetic_raw_dataset(tmp_path / "user_raw", num_patients=6, cases_per_patient=3, shape=(2, 8, 12))
    before = snapshot(source)
    target = derive_holdout(source, 2, 502, Grouping(pattern=PATTERN))
    assert snapshot(source) == before
    assert target == nnunet_env["nnUNet_raw"] / "Dataset502_SyntheticBlobs"
    description = json.loads((target / "dataset.json").read_text())
    held_out = description["derived_from"]["held_out_units"]
    assert len(held_out) == 2 and description["derived_from"]["dataset"] == "Dataset402_SyntheticBlobs"
    test_cases = {f"{unit}_{visit}" for unit in held_out for visit in "abc"}
    assert cases_in(target / "imagesTs") == cases_in(target / "labelsTs") == test_cases
    assert cases_in(target / "imagesTr") == cases_in(target / "labelsTr") == cases_in(source / "labelsTr") - test_cases
    assert description["numTraining"] == 12 and description["labels"]["blob3"] == 3
    assert derive_holdout(source, 2, 502, Grouping(pattern=PATTERN), overwrite=True) == target
    assert json.loads((target / "dataset.json").read_text())["derived_from"]["held_out_units"] == held_out

    # The derived dataset's units.json keeps the grouping: its folds never split a patient either.
    table = make_few_label_splits(502, [1, 2], seeds=2, val_patients=1)
    for fold in table["folds"]:
        for group in (fold["train_cases"], fold["val_cases"]):
            patients = {case.split("_")[0] for case in group}
            assert len(group) == 3 * len(patients)
        assert not {case.split("_")[0] for case in fold["train_cases"]} & {c.split("_")[0] for c in fold["val_cases"]}
        assert not set(fold["train_cases"] + fold["val_cases"]) & test_cases


def test_strata_spread_the_test_set_over_them(nnunet_env, tmp_path):
    source = write_synthetic_raw_dataset(tmp_path / "user_raw", num_patients=12, cases_per_patient=1, shape=(2, 8, 8))
    strata = tmp_path / "strata.json"
    sites = {f"patient{n:02d}_a": "site1" if n <= 10 else f"site{n - 9}" for n in range(1, 13)}
    strata.write_text(json.dumps(sites))
    target = derive_holdout(source, 3, 502, Grouping(strata_file=strata))
    held_out = json.loads((target / "dataset.json").read_text())["derived_from"]["held_out_units"]
    assert sorted(sites[unit] for unit in held_out) == ["site1", "site2", "site3"]


def compare_args(dataset: str, **overrides) -> SimpleNamespace:
    args = dict(
        dataset=dataset,
        holdout=1,
        derived_id=None,
        test_images=None,
        test_labels=None,
        val_patients=1,
        budgets=[1],
        methods=["nnunet", "linear", "zero_shot"],
    )
    return SimpleNamespace(**{**args, **overrides})


def test_compare_names_what_is_wrong_before_writing_anything(nnunet_env, tmp_path):
    raw = nnunet_env["nnUNet_raw"]
    source = write_synthetic_raw_dataset(raw, num_patients=3, cases_per_patient=2, shape=(2, 8, 12))
    working = tmp_path / "out" / "nnUNet_raw"
    grouped = Grouping(pattern=PATTERN)

    def refused(match: str, args, grouping=grouped):
        with pytest.raises(InputError, match=match):
            plan_dataset(args, working, grouping)

    plan = plan_dataset(compare_args("402"), working, grouped)
    assert (plan.dataset_id, plan.test_kind, plan.source) == ("902", "holdout", source)
    refused("cannot find one dataset for '77'", compare_args("77"))
    refused("has 3 units .* need 4: lower --holdout", compare_args("402", budgets=[2]))
    refused("no imagesTs/labelsTs to test on: pass --holdout N", compare_args("402", holdout=None))
    refused("--test-images and --test-labels go together", compare_args("402", holdout=None, test_images=tmp_path))
    description = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps({**description, "channel_names": {"0": "T1", "1": "T2"}}))
    refused("patient01_a_0001.nii.gz is missing: case patient01_a has other channels", compare_args("402"))
    regions = {"background": 0, "whole": [1, 2, 3], "core": [2, 3]}
    (source / "dataset.json").write_text(json.dumps({**description, "labels": regions, "regions_class_order": [1, 2]}))
    refused("region-based labels .* pass --methods nnunet", compare_args("402"))
    assert plan_dataset(compare_args("402", methods=["nnunet"]), working, grouped).test_kind == "holdout"
    (source / "dataset.json").write_text(json.dumps(description))
    (source / "labelsTr" / "patient02_b.nii.gz").unlink()
    refused("patient02_b.nii.gz is missing: .*run nnunet-autosam verify", compare_args("402"), Grouping())
    assert not working.exists()


def test_test_folders_must_pair_every_image_with_its_label(nnunet_env, tmp_path):
    write_synthetic_raw_dataset(nnunet_env["nnUNet_raw"], num_patients=3, cases_per_patient=1, shape=(2, 8, 12))
    other = write_synthetic_raw_dataset(tmp_path / "tests", num_patients=2, cases_per_patient=1, shape=(2, 8, 12))
    args = compare_args("402", holdout=None, test_images=other / "imagesTr", test_labels=other / "labelsTr")
    plan = plan_dataset(args, tmp_path / "out" / "nnUNet_raw", Grouping())
    assert (plan.test_kind, plan.test_labels) == ("folders", other / "labelsTr")
    (other / "labelsTr" / "patient01_a.nii.gz").unlink()
    with pytest.raises(InputError, match="do not hold the same cases \\(e.g. patient01_a\\)"):
        plan_dataset(args, tmp_path / "out" / "nnUNet_raw", Grouping())


def test_a_two_channel_dataset_is_checked_held_out_and_tested_with_every_channel(nnunet_env, tmp_path):
    source = write_synthetic_raw_dataset(
        nnunet_env["nnUNet_raw"], num_patients=3, cases_per_patient=1, shape=(2, 8, 12), num_channels=2
    )
    first, second = (sitk.ReadImage(str(source / "imagesTr" / f"patient01_a_{c:04d}.nii.gz")) for c in (0, 1))
    assert not np.array_equal(sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(second))
    working = tmp_path / "out" / "nnUNet_raw"
    assert plan_dataset(compare_args("402"), working, Grouping()).test_kind == "holdout"  # SAM methods included

    target = derive_holdout(source, 1, 502)
    for suffix in ("Tr", "Ts"):
        names = sorted(p.name for p in (target / f"images{suffix}").iterdir())
        assert names == [
            f"{case}_{c:04d}.nii.gz" for case in sorted(cases_in(target / f"labels{suffix}")) for c in (0, 1)
        ]

    tests = write_synthetic_raw_dataset(
        tmp_path / "tests", num_patients=2, cases_per_patient=1, shape=(2, 8, 12), num_channels=2
    )
    args = compare_args("502", holdout=None, test_images=tests / "imagesTr", test_labels=tests / "labelsTr")
    assert plan_dataset(args, working, Grouping()).test_kind == "folders"
    (tests / "imagesTr" / "patient02_a_0001.nii.gz").unlink()
    with pytest.raises(InputError, match="imagesTr/patient02_a_0001.nii.gz is missing: every test case needs all 2"):
        plan_dataset(args, working, Grouping())


def acdc_reproduction(acdc_dir: Path, count: int, budgets, val_patients: int) -> tuple:
    """(test patients, folds) of convert-acdc --holdout, and of convert-acdc then the generic holdout."""
    official = convert_acdc(acdc_dir, dataset_id=27, holdout=count)
    info = json.loads((official / "acdc_info.json").read_text())
    official_test = sorted(p for p, entry in info.items() if entry["subset"] == "holdout")
    plain = convert_acdc(acdc_dir, dataset_id=28, name="ACDCplain")
    derived = derive_holdout(plain, count, 528)
    generic_test = json.loads((derived / "dataset.json").read_text())["derived_from"]["held_out_units"]
    assert cases_in(derived / "labelsTs") == cases_in(official / "labelsTs")
    folds = [make_few_label_splits(d, budgets, seeds=3, val_patients=val_patients) for d in (27, 528)]
    for table in folds:
        table.pop("dataset")
    return official_test, generic_test, folds


def test_acdc_through_the_generic_holdout_gives_the_same_test_patients_and_folds(nnunet_env, tmp_path):
    acdc = write_synthetic_acdc(tmp_path / "acdc", num_patients=12, shape=(2, 16, 16))
    official, generic, (official_folds, generic_folds) = acdc_reproduction(acdc, 5, [1, 2], 2)
    assert official == generic and len(official) == 5
    assert official_folds == generic_folds and len(official_folds["folds"]) == 6


@pytest.mark.slow
def test_the_published_acdc_protocol_through_the_generic_holdout(acdc_dir, nnunet_env):
    """On the real ACDC: the 20 published test patients, and the same folds as convert-acdc --holdout 20."""
    official, generic, (official_folds, generic_folds) = acdc_reproduction(acdc_dir, 20, [1, 5], 2)
    assert official == generic == PUBLISHED_TEST_PATIENTS
    assert official_folds == generic_folds
