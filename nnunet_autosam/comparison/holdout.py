"""`nnunet-autosam holdout`: a test set carved out of a dataset's labelled cases, into a derived dataset.

Why a derived dataset: a test set must be set aside before anything plans, splits or trains, and nnU-Net
plans on every case of imagesTr. The derived dataset (a new id) holds the remaining units in
imagesTr/labelsTr and the held-out ones in imagesTs/labelsTs, so nothing of the test set reaches
``nnUNetv2_plan_and_preprocess``, the splits or the validation; the user's dataset is only read.
Units, not cases, are held out (data/grouping.py: all frames of a patient stay together), stratified
where strata are known, with a fixed seed: the same arguments hold out the same units, and on a
``convert-acdc`` dataset the same patients as ``convert-acdc --holdout N``. The derived dataset.json
says where it came from (``derived_from``) and ``units.json`` records every unit, its stratum and its side.
"""

import json
import shutil
from pathlib import Path

from tqdm import tqdm

from nnunet_autosam.data.conversion import dataset_folder
from nnunet_autosam.data.grouping import (
    HOLDOUT_SEED,
    HOLDOUT_SUBSET,
    TRAINING_SUBSET,
    UNITS_FILE,
    Grouping,
    add_grouping_arguments,
    cases_of,
    dataset_units,
    draw_holdout,
    grouping_from_args,
)
from nnunet_autosam.data.verify import complete_cases
from nnunet_autosam.utilities.atomic import atomic_path, write_json
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.nnunet_paths import nnunet_folder, resolve_dataset

DERIVED_ID_OFFSET = 500  # default id of a derived dataset: the source's id + 500


def source_folder(reference: str) -> Path:
    """A raw dataset folder given as a path, or as an id or DatasetXXX_NAME under $nnUNet_raw."""
    path = Path(reference).expanduser()
    if path.is_dir():
        folder = path.resolve()
    else:
        folder = nnunet_folder("nnUNet_raw") / resolve_dataset(reference)
    if not (folder / "dataset.json").is_file():
        raise InputError(
            f"{folder} has no dataset.json: pass an nnU-Net v2 raw dataset (imagesTr, labelsTr, dataset.json)"
        )
    return folder


def read_dataset_json(folder: Path) -> dict:
    try:
        return json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    except ValueError as error:
        raise InputError(f"{folder / 'dataset.json'} is not valid JSON ({error}): fix or regenerate it") from None


def dataset_number(folder: Path) -> int:
    """The id of a DatasetXXX_NAME folder."""
    try:
        return int(folder.name[len("Dataset") : len("Dataset") + 3])
    except ValueError:
        raise InputError(f"{folder.name} is not named DatasetXXX_NAME as nnU-Net requires: rename it") from None


def short_name(folder: Path) -> str:
    """NAME of a DatasetXXX_NAME folder (the whole name of a folder named otherwise)."""
    return folder.name.split("_", 1)[1] if "_" in folder.name else folder.name


def default_derived_id(source: Path) -> int:
    derived = dataset_number(source) + DERIVED_ID_OFFSET
    if derived > 999:
        raise InputError(
            f"{source.name} has an id above {999 - DERIVED_ID_OFFSET}: pick the derived dataset's id "
            f"(holdout -d ID, compare --derived-id ID)"
        )
    return derived


def derive_holdout(
    source: Path, count: int, dataset_id: int | None = None, grouping: Grouping | None = None, overwrite=False
) -> Path:
    """Write the derived dataset (see the module docstring) into $nnUNet_raw and return its folder."""
    dataset_json = read_dataset_json(source)
    cases = {case.name: case for case in complete_cases(source, dataset_json, "Tr")}
    units = dataset_units(source, sorted(cases), grouping)
    held_out = set(draw_holdout(units, count))
    target = dataset_folder(dataset_id or default_derived_id(source), short_name(source), overwrite)
    if target.resolve() == source.resolve():
        raise InputError(f"the derived dataset would replace {source}: pick another id with -d")
    ending = dataset_json["file_ending"]
    with atomic_path(target) as tmp:
        for unit, (_, unit_cases) in tqdm(units.items(), desc=f"Deriving {target.name}", unit="unit"):
            suffix = "Ts" if unit in held_out else "Tr"
            for case_id in unit_cases:
                case = cases[case_id]
                for folder in (tmp / f"images{suffix}", tmp / f"labels{suffix}"):
                    folder.mkdir(parents=True, exist_ok=True)
                for image in case.images:
                    shutil.copyfile(image, tmp / f"images{suffix}" / image.name)
                assert case.label is not None  # complete_cases requires a label for every training case
                shutil.copyfile(case.label, tmp / f"labels{suffix}" / f"{case_id}{ending}")
        derived = {
            **dataset_json,
            "numTraining": sum(len(unit_cases) for unit, (_, unit_cases) in units.items() if unit not in held_out),
            "derived_from": {
                "dataset": source.name,
                "folder": str(source),
                "held_out_units": sorted(held_out),
                "held_out_cases": cases_of(units, held_out),
                "seed": HOLDOUT_SEED,
                "grouping": (grouping or Grouping()).arguments(),
            },
        }
        write_json(derived, tmp / "dataset.json", sort_keys=False)
        write_json(
            {
                unit: {
                    "cases": unit_cases,
                    "stratum": stratum,
                    "subset": HOLDOUT_SUBSET if unit in held_out else TRAINING_SUBSET,
                }
                for unit, (stratum, unit_cases) in units.items()
            },
            tmp / UNITS_FILE,
        )
    return target


def run(args) -> None:
    source = source_folder(args.source)
    target = derive_holdout(source, args.count, args.dataset_id, grouping_from_args(args), args.overwrite)
    held_out = json.loads((target / "dataset.json").read_text(encoding="utf-8"))["derived_from"]["held_out_units"]
    print(f"Wrote {target}: {source.name} with {len(held_out)} units held out as imagesTs/labelsTs")
    print(f"Held out: {' '.join(held_out)}")
    print(f"Next: nnUNetv2_plan_and_preprocess -d {dataset_number(target)} -c 2d")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "holdout",
        help="hold out N labelled units of a dataset as the test set of a new, derived dataset",
        description="Copy a raw dataset into $nnUNet_raw/DatasetXXX_NAME (a new id) with N of its labelled units "
        "(cases grouped by patient: --group-pattern, --group-map, or as the dataset records them) moved to "
        "imagesTs/labelsTs, stratified by --strata where given, with a fixed seed. The source is only read.",
    )
    parser.add_argument("source", metavar="SOURCE", help="dataset id, DatasetXXX_NAME under $nnUNet_raw, or a folder")
    parser.add_argument("--count", type=int, required=True, metavar="N", help="units to hold out")
    parser.add_argument(
        "-d", "--dataset-id", type=int, help=f"id of the derived dataset (default: the source's + {DERIVED_ID_OFFSET})"
    )
    add_grouping_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing derived dataset")
    parser.set_defaults(func=run)
