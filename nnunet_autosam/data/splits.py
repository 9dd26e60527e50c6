"""`nnunet-autosam splits`: few-label training sets as nnU-Net folds.

nnU-Net trains fold N on entry N of ``$nnUNet_preprocessed/DatasetXXX/splits_final.json``, so each
(budget, seed) pair becomes one entry and ``nnUNetv2_train DATASET 2d N`` trains on that many labelled
patients. Budgets count patients (units, data/grouping.py), not frames: all frames of a patient always
sit on the same side.
One validation set, drawn with its own fixed seed, is shared by every entry so scores compare across
budgets and seeds. ``few_label_splits.json`` beside it records the same splits by patient for reports.
"""

import json
from pathlib import Path

import numpy as np

from nnunet_autosam.data.grouping import (
    Grouping,
    Units,
    add_grouping_arguments,
    by_group,
    cases_of,
    dataset_units,
    grouping_from_args,
    stratified_draw,
)
from nnunet_autosam.utilities.atomic import write_json
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.nnunet_paths import nnunet_folder, resolve_dataset

VALIDATION_SEED = 20170  # fixed and separate from the training seeds, so the validation set never moves
SPLITS_FILE = "splits_final.json"
TABLE_FILE = "few_label_splits.json"


def labelled_cases(raw_dataset: Path) -> list[str]:
    """Case ids of the labelled training cases, as nnU-Net will see them (labelsTr file names)."""
    dataset_json = raw_dataset / "dataset.json"
    if not dataset_json.is_file():
        raise InputError(f"{dataset_json} not found: convert the dataset first (nnunet-autosam convert-acdc)")
    ending = json.loads(dataset_json.read_text(encoding="utf-8"))["file_ending"]
    labels = raw_dataset / "labelsTr"
    cases = sorted(p.name[: -len(ending)] for p in labels.glob(f"*{ending}")) if labels.is_dir() else []
    if not cases:
        raise InputError(f"{labels} holds no {ending} labels: convert the dataset again")
    return cases


def dataset_patients(dataset_name: str, grouping: Grouping | None = None) -> Units:
    """Patient (unit) id -> (stratum, case ids) over the labelled training cases (data/grouping.py).

    ACDC datasets carry their patients and pathology groups in ``acdc_info.json``; others group by
    ``grouping``, by the ``units.json`` of a derived dataset, or each case is its own patient.
    """
    raw_dataset = nnunet_folder("nnUNet_raw") / dataset_name
    return dataset_units(raw_dataset, labelled_cases(raw_dataset), grouping)


def check_arguments(budgets, seeds: int, val_patients: int, num_patients: int, dataset_name: str) -> None:
    if not budgets or min(budgets) < 1:
        raise InputError("--labelled needs budgets of at least 1 patient, e.g. --labelled 1 5 20")
    if seeds < 1 or val_patients < 1:
        raise InputError("--seeds and --val-patients must be at least 1")
    if max(budgets) > num_patients - 1:
        raise InputError(
            f"budget {max(budgets)} exceeds the {num_patients - 1} patients of {dataset_name} left "
            f"after keeping one for validation: use budgets up to {num_patients - 1}"
        )


def make_few_label_splits(dataset, budgets, seeds: int, val_patients: int = 20, grouping=None) -> dict:
    """The split table: one validation set, then one training set per (budget, seed), budgets outermost.

    The validation set has ``val_patients`` patients, or fewer on a small dataset so that the largest
    budget still fits in what is left. Each training set is drawn with ``default_rng([seed, budget])``,
    so the same arguments always give the same table.
    """
    dataset_name = resolve_dataset(dataset)
    patients = dataset_patients(dataset_name, grouping)
    check_arguments(budgets, seeds, val_patients, len(patients), dataset_name)
    val_count = min(val_patients, len(patients) - max(budgets))
    validation = stratified_draw(by_group(patients), val_count, np.random.default_rng(VALIDATION_SEED))
    training_pool = by_group(patients, exclude=set(validation))
    val_cases = cases_of(patients, validation)
    folds: list[dict] = []
    for budget in budgets:
        for seed in range(seeds):
            train = stratified_draw(training_pool, budget, np.random.default_rng([seed, budget]))
            folds.append(
                {
                    "fold": len(folds),
                    "budget": budget,
                    "seed": seed,
                    "train_patients": train,
                    "train_cases": cases_of(patients, train),
                    "val_cases": val_cases,
                }
            )
    return {"dataset": dataset_name, "val_patients": validation, "folds": folds}


def read_splits(path: Path):
    """The splits in ``path``, or None when it is unreadable (a damaged file is not worth keeping)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def write_splits(table: dict, force: bool = False) -> Path:
    """Write splits_final.json (for nnU-Net) and few_label_splits.json (the table); return the former.

    An existing splits_final.json with other content (nnU-Net writes a default 5-fold one on first
    training) is only replaced with ``force``: the folds trained on it would silently change meaning.
    """
    folder = nnunet_folder("nnUNet_preprocessed") / table["dataset"]
    splits = [{"train": fold["train_cases"], "val": fold["val_cases"]} for fold in table["folds"]]
    target = folder / SPLITS_FILE
    if target.is_file() and not force and read_splits(target) != splits:
        raise InputError(
            f"{target} already exists with other splits: pass --force to replace it "
            f"(folds already trained on it would no longer match)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    write_json(table, folder / TABLE_FILE)
    write_json(splits, target)
    return target


def print_table(table: dict) -> None:
    val_cases = table["folds"][0]["val_cases"]
    print(
        f"{table['dataset']}: {len(table['val_patients'])} validation patients ({len(val_cases)} cases), "
        f"the same for every fold"
    )
    print("fold  budget  seed  training patients")
    for fold in table["folds"]:
        print(f"{fold['fold']:>4}  {fold['budget']:>6}  {fold['seed']:>4}  {' '.join(fold['train_patients'])}")


def run(args) -> None:
    table = make_few_label_splits(args.dataset, args.labelled, args.seeds, args.val_patients, grouping_from_args(args))
    target = write_splits(table, args.force)
    print_table(table)
    print(f"Wrote {target} and {target.with_name(TABLE_FILE).name}.")
    print(f"Fold N trains on entry N: nnUNetv2_train {table['dataset']} 2d N -tr TRAINER")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "splits",
        help="write few-label training splits (budget x seed) as nnU-Net folds",
        description="Write $nnUNet_preprocessed/DatasetXXX/splits_final.json with one fold per (budget, seed) "
        "and a shared validation set, plus few_label_splits.json listing the patients of each fold. "
        "Budgets count patients (units: cases grouped by --group-pattern or --group-map, or as the dataset "
        "records them); ACDC folds are stratified by pathology group.",
    )
    parser.add_argument("dataset", metavar="DATASET", help="dataset id (27) or name (Dataset027_ACDC)")
    parser.add_argument(
        "--labelled", nargs="+", type=int, required=True, metavar="N", help="training budgets in patients, e.g. 1 5 20"
    )
    parser.add_argument("--seeds", type=int, default=3, help="draws per budget (default: 3)")
    parser.add_argument(
        "--val-patients",
        type=int,
        default=20,
        help="size of the shared validation set in patients (default: 20, fewer on small datasets)",
    )
    add_grouping_arguments(parser)
    parser.add_argument("--force", action="store_true", help="replace a splits_final.json with other content")
    parser.set_defaults(func=run)
