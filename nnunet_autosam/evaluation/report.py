"""`nnunet-autosam report`: the paper's few-label table (Dice per class, mean Dice, ASSD, HD95) from trained folds.

Every ``{Trainer}__{plans}__{configuration}`` folder in ``$nnUNet_results/DatasetXXX`` is one method; each of its
trained folds (``checkpoint_final.pth`` present) maps to a (budget, seed) pair through the saved split table
``few_label_splits.json`` and is evaluated with :func:`evaluate_folder` (always afresh, so the numbers can never be
stale). On a test set (``--test-pred-root``) the predictions are what is scored, so a fold whose test predictions
are there counts whether or not its model still is (a comparison's ``runs/`` carried to another machine brings its
predictions, not its checkpoints). Per method and budget the table shows mean +/- sample std over seeds (Dice in %,
ASSD and HD95 in mm). Folds the table lists but a method lacks are listed as missing, trained folds the table does
not know are listed as unmapped: nothing is dropped silently.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from nnunetv2.configuration import default_num_processes

from nnunet_autosam.data.conversion import LABELS as ACDC_LABELS
from nnunet_autosam.evaluation.methods import ZERO_SHOT_PREFIX, method_sort_key
from nnunet_autosam.evaluation.metrics import (
    DEFAULT_FILE_ENDING,
    evaluate_folder,
    labels_from_dataset_json,
    list_cases,
    missing_predictions,
)
from nnunet_autosam.evaluation.report_tables import markdown_report, plot_report, table_rows, write_csv_report
from nnunet_autosam.utilities.atomic import atomic_path, write_text
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.nnunet_paths import nnunet_folder, resolve_dataset

SPLIT_TABLE_NAME = "few_label_splits.json"
TRAINED_MARKER = "checkpoint_final.pth"
# convert-acdc's class names as the paper shows them; applied to datasets with exactly ACDC's labels only.
ACDC_DISPLAY_NAMES = {"MLV": "Myo", "LVC": "LV"}


@dataclass
class FoldResult:
    method: str  # the results folder name, Trainer__plans__configuration (or zero-shot:FOLDER)
    fold: int  # None for a zero-shot method
    budget: int
    seed: int
    class_dice: dict  # label -> Dice in [0, 1]
    mean_dice: float
    assd_mm: float
    hd95_mm: float


@dataclass
class MissingFold:
    method: str
    fold: int
    budget: int
    seed: int
    reason: str


def load_split_table(preprocessed_dir: Path) -> dict:
    table_file = preprocessed_dir / SPLIT_TABLE_NAME
    if not table_file.is_file():
        raise InputError(f"no split table {table_file}; create it with `nnunet-autosam splits` before training")
    return json.loads(table_file.read_text(encoding="utf-8"))


def load_dataset_json(dataset_name: str) -> dict:
    """dataset.json from nnUNet_raw, else the copy nnU-Net keeps in nnUNet_preprocessed."""
    for variable in ("nnUNet_raw", "nnUNet_preprocessed"):
        candidate = nnunet_folder(variable) / dataset_name / "dataset.json"
        if candidate.is_file():
            return json.loads(candidate.read_text(encoding="utf-8"))
    raise InputError(
        f"no dataset.json for {dataset_name} in nnUNet_raw or nnUNet_preprocessed; convert the dataset first"
    )


def display_label_names(dataset_json: dict, labels) -> dict:
    """label (int or region tuple) -> column name: dataset.json's class names (ACDC's MLV and LVC as Myo and LV)."""
    by_value = {
        tuple(value) if isinstance(value, list) else value: name for name, value in dataset_json["labels"].items()
    }
    display = ACDC_DISPLAY_NAMES if dataset_json["labels"] == ACDC_LABELS else {}
    names = {}
    for label in labels:
        name = by_value.get(label, str(label))
        names[label] = display.get(name, name)
    return names


def dataset_title(dataset_name: str, dataset_json: dict) -> str:
    """The folder name, with dataset.json's own name where it says more: ``Dataset901_X (synthetic cardiac)``."""
    name = str(dataset_json.get("name") or "")
    return dataset_name if not name or dataset_name.endswith(f"_{name}") else f"{dataset_name} ({name})"


def find_methods(results_dir: Path, test_pred_root: Path | None = None) -> list:
    """Folders named Trainer__plans__configuration in the results (and, on a test set, in its predictions), in
    display order.

    A folder holding only ``fold_all`` (SimCLR's pretraining, say) trained on no split: it is not a row.
    """
    if not results_dir.is_dir() and test_pred_root is None:
        raise InputError(f"no results folder {results_dir}; train with nnUNetv2_train first (or check nnUNet_results)")
    methods = set(method_folders(results_dir)) | set(method_folders(test_pred_root) if test_pred_root else [])
    if not methods:
        raise InputError(f"no Trainer__plans__configuration folders in {results_dir}; train with nnUNetv2_train first")
    return sorted(methods, key=method_sort_key)


def method_folders(folder: Path) -> list:
    if not folder.is_dir():
        return []
    return [
        path.name
        for path in folder.iterdir()
        if path.is_dir() and len(path.name.split("__")) == 3 and not _trained_on_all_only(path)
    ]


def _trained_on_all_only(method_dir: Path) -> bool:
    folds = [path.name for path in method_dir.glob("fold_*") if path.is_dir()]
    return folds == ["fold_all"]


def trained_folds(method_dir: Path) -> list:
    """Fold numbers whose training finished (checkpoint_final.pth written)."""
    return sorted(
        int(path.name[len("fold_") :])
        for path in method_dir.glob("fold_*")
        if path.name[len("fold_") :].isdigit() and (path / TRAINED_MARKER).is_file()
    )


@dataclass
class EvaluationSource:
    """Where a fold's predictions and references are: the fold's validation set, or a test set."""

    results_dir: Path
    gt_dir: Path
    test_pred_root: Path | None = None

    def pred_dir(self, method: str, fold: int) -> Path:
        if self.test_pred_root is None:
            return self.results_dir / method / f"fold_{fold}" / "validation"
        return self.test_pred_root / method / f"fold_{fold}"

    def cases(self, split: dict) -> list:
        if self.test_pred_root is None:
            return split["val_cases"]
        return list_cases(self.gt_dir, DEFAULT_FILE_ENDING)


def fold_result(method: str, fold, budget: int, seed: int, summary: dict, labels) -> FoldResult:
    """The table's numbers from an evaluate_folder summary."""
    foreground = summary["foreground_mean"]
    return FoldResult(
        method,
        fold,
        budget,
        seed,
        {label: summary["mean"][label]["Dice"] for label in labels},
        foreground["Dice"],
        foreground["ASSD_mm"],
        foreground["HD95_mm"],
    )


def evaluate_method(
    method: str, splits: list, source: EvaluationSource, labels, ignore_label, summaries_dir: Path, num_processes: int
):
    """Evaluate the method's folds of the table that were trained (or, on a test set, predicted); returns
    (results, missing folds)."""
    trained = set(trained_folds(source.results_dir / method))
    results, missing = [], []
    for split in splits:
        fold, budget, seed = split["fold"], split["budget"], split["seed"]
        pred_dir, cases = source.pred_dir(method, fold), source.cases(split)
        if fold not in trained and (source.test_pred_root is None or not pred_dir.is_dir()):
            missing.append(MissingFold(method, fold, budget, seed, f"not trained (no {TRAINED_MARKER})"))
            continue
        absent = missing_predictions(pred_dir, cases)
        if absent:
            missing.append(
                MissingFold(
                    method, fold, budget, seed, f"{len(absent)} of {len(cases)} predictions missing in {pred_dir}"
                )
            )
            continue
        summary = evaluate_folder(
            pred_dir,
            source.gt_dir,
            labels=labels,
            ignore_label=ignore_label,
            output_file=summaries_dir / f"{method}__fold_{fold}.json",
            num_processes=num_processes,
            cases=cases,
        )
        results.append(fold_result(method, fold, budget, seed, summary, labels))
    return results, missing


def evaluate_zero_shot(
    pred_dir: Path,
    splits: list,
    source: EvaluationSource,
    labels,
    ignore_label,
    summaries_dir: Path,
    num_processes: int,
) -> list:
    """A method that trains on nothing: scored once on the report's cases, shown in every budget's block."""
    method = ZERO_SHOT_PREFIX + pred_dir.name
    cases = source.cases(splits[0])
    absent = missing_predictions(pred_dir, cases)
    if absent:
        raise InputError(
            f"{pred_dir} lacks {len(absent)} of {len(cases)} predictions (e.g. {absent[0]}): run "
            f"nnunet-autosam zero-shot on the same images the report scores"
        )
    summary = evaluate_folder(
        pred_dir,
        source.gt_dir,
        labels=labels,
        ignore_label=ignore_label,
        output_file=summaries_dir / f"zero-shot__{pred_dir.name}.json",
        num_processes=num_processes,
        cases=cases,
    )
    return [
        fold_result(method, None, budget, 0, summary, labels)
        for budget in sorted({split["budget"] for split in splits})
    ]


def build_report(
    dataset,
    test_pred_root=None,
    out_dir=None,
    num_processes: int = default_num_processes,
    zero_shot_dirs=(),
    test_labels=None,
) -> Path:
    """Evaluate every trained fold of every method and write report.md, report.csv and report.png; returns out_dir.

    ``zero_shot_dirs``: folders of `nnunet-autosam zero-shot` predictions for the same images (the
    shared validation cases, or the test set with ``test_pred_root``); each becomes one more method.
    ``test_labels``: the test set's references (default: the raw dataset's labelsTs).
    """
    dataset_name = resolve_dataset(dataset)
    preprocessed_dir = nnunet_folder("nnUNet_preprocessed") / dataset_name
    results_dir = nnunet_folder("nnUNet_results") / dataset_name
    splits = load_split_table(preprocessed_dir)["folds"]
    if test_pred_root is None:
        source = EvaluationSource(results_dir, preprocessed_dir / "gt_segmentations")
        evaluated_on, default_out = "validation folds", "autosam_report"
    else:
        gt_dir = Path(test_labels) if test_labels else nnunet_folder("nnUNet_raw") / dataset_name / "labelsTs"
        source = EvaluationSource(results_dir, gt_dir, Path(test_pred_root))
        evaluated_on, default_out = f"test set, predictions in {test_pred_root}", "autosam_report_test"
    if not source.gt_dir.is_dir():
        raise InputError(
            f"no references in {source.gt_dir}; run nnUNetv2_plan_and_preprocess (validation) "
            f"or put the test labels in labelsTs"
        )
    out_dir = Path(out_dir) if out_dir is not None else results_dir / default_out
    dataset_json = load_dataset_json(dataset_name)
    labels, ignore_label = labels_from_dataset_json(dataset_json)
    label_names = display_label_names(dataset_json, labels)

    methods = find_methods(results_dir, source.test_pred_root)
    results, missing = [], []
    with atomic_path(out_dir / "summaries") as summaries_dir:  # replaced whole: no stale folds from earlier runs
        summaries_dir.mkdir()
        for method in methods:
            method_results, method_missing = evaluate_method(
                method, splits, source, labels, ignore_label, summaries_dir, num_processes
            )
            results += method_results
            missing += method_missing
        for pred_dir in zero_shot_dirs:
            results += evaluate_zero_shot(
                Path(pred_dir), splits, source, labels, ignore_label, summaries_dir, num_processes
            )
    table_folds = {split["fold"] for split in splits}
    unmapped = [
        (method, fold) for method in methods for fold in trained_folds(results_dir / method) if fold not in table_folds
    ]

    methods += [ZERO_SHOT_PREFIX + Path(pred_dir).name for pred_dir in zero_shot_dirs]
    rows = table_rows(methods, sorted({split["budget"] for split in splits}), results, missing, labels, label_names)
    title = dataset_title(dataset_name, dataset_json)
    write_text(markdown_report(title, evaluated_on, rows, label_names, missing, unmapped), out_dir / "report.md")
    write_csv_report(rows, label_names, out_dir / "report.csv")
    plot_report(rows, title, out_dir / "report.png")
    return out_dir


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "report",
        help="the paper's few-label table (Dice per class, mean Dice, ASSD, HD95) over all trained folds",
        description="Evaluate every trained fold of every Trainer__plans__configuration folder of a dataset, map "
        f"folds to (budget, seed) with {SPLIT_TABLE_NAME}, and write report.md, report.csv and report.png.",
    )
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name, e.g. 27 or Dataset027_ACDC")
    parser.add_argument(
        "--test-pred-root",
        type=Path,
        default=None,
        help="evaluate test-set predictions in DIR/Trainer__plans__configuration/fold_N/ against "
        "nnUNet_raw/DatasetXXX/labelsTs instead of the validation folds",
    )
    parser.add_argument(
        "--test-labels",
        type=Path,
        metavar="DIR",
        help="references of the test set with --test-pred-root (default: nnUNet_raw/DatasetXXX/labelsTs)",
    )
    parser.add_argument(
        "--zero-shot",
        type=Path,
        nargs="+",
        default=(),
        metavar="DIR",
        help="folders of `nnunet-autosam zero-shot` predictions of the same images; each is "
        "shown as one more method in every budget's block",
    )
    parser.add_argument(
        "-o",
        "--out-dir",
        type=Path,
        default=None,
        help="output folder (default: nnUNet_results/DatasetXXX/autosam_report, "
        "or autosam_report_test with --test-pred-root)",
    )
    parser.add_argument(
        "-np",
        "--num-processes",
        type=int,
        default=default_num_processes,
        help=f"worker processes per fold evaluation (default: {default_num_processes})",
    )
    parser.set_defaults(func=run)


def run(args):
    out_dir = build_report(
        args.dataset,
        test_pred_root=args.test_pred_root,
        out_dir=args.out_dir,
        num_processes=args.num_processes,
        zero_shot_dirs=args.zero_shot,
        test_labels=args.test_labels,
    )
    print((out_dir / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {out_dir / 'report.md'}, report.csv and report.png")
