"""`nnunet-autosam report`: the paper's few-label table (Dice per class, mean Dice, ASSD, HD95) from trained folds.

Every ``{Trainer}__{plans}__{configuration}`` folder in ``$nnUNet_results/DatasetXXX`` is one method;
each of its trained folds (``checkpoint_final.pth`` present) maps to a (budget, seed) pair through the
saved split table ``few_label_splits.json`` and is evaluated with :func:`evaluate_folder` (always
afresh, so the numbers can never be stale). Per method and budget the table shows mean +/- sample std
over seeds (Dice in %, ASSD and HD95 in mm). Folds the table lists but a method lacks are listed as missing,
trained folds the table does not know are listed as unmapped: nothing is dropped silently.
"""

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nnunetv2.configuration import default_num_processes

from nnunet_autosam.utilities.atomic import atomic_path, write_text
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.nnunet_paths import nnunet_folder, resolve_dataset
from nnunet_autosam.evaluation.metrics import (DEFAULT_FILE_ENDING, evaluate_folder, labels_from_dataset_json,
                                       list_cases, missing_predictions)

SPLIT_TABLE_NAME = "few_label_splits.json"
TRAINED_MARKER = "checkpoint_final.pth"
METHOD_NAMES = {
    "nnUNetTrainer": "nnU-Net 2d",
    "nnUNetTrainerEnvSchedule": "nnU-Net 2d (short schedule)",
    "nnUNetTrainerSimCLRFinetune": "nnU-Net 2d + SimCLR",
    "AutoSAMTrainer": "AutoSAM",
    "AutoSAMFullFTTrainer": "AutoSAM (ft all)",
    "SAMCNNTrainer": "SAM encoder + CNN",
    "SAMLinearTrainer": "SAM encoder + linear",
}
ZERO_SHOT_PREFIX = "zero-shot:"  # method key of a folder of `nnunet-autosam zero-shot` predictions
DEFAULT_PLANS = "nnUNetPlans"
DEFAULT_CONFIGURATION = "2d"
LABEL_DISPLAY_NAMES = {"MLV": "Myo", "LVC": "LV"}  # ACDC's converter names, shown as in the paper


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


def method_display_name(folder_name: str) -> str:
    """A readable method name; plans and configuration are appended only when not the defaults."""
    if folder_name.startswith(ZERO_SHOT_PREFIX):
        return f"zero-shot SAM, oracle box prompts [{folder_name[len(ZERO_SHOT_PREFIX):]}]"
    trainer, plans, configuration = folder_name.split("__")
    name = METHOD_NAMES.get(trainer, trainer)
    if plans != DEFAULT_PLANS:
        name += f" [{plans}]"
    if configuration != DEFAULT_CONFIGURATION:
        name += f" ({configuration})"
    return name


def method_sort_key(folder_name: str):
    """Known trainers in the paper's order, then the others alphabetically."""
    trainer = folder_name.split("__")[0]
    known = list(METHOD_NAMES)
    return (known.index(trainer) if trainer in known else len(known), folder_name)


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
    raise InputError(f"no dataset.json for {dataset_name} in nnUNet_raw or nnUNet_preprocessed; "
                     f"convert the dataset first")


def display_label_names(dataset_json: dict, labels) -> dict:
    """label (int or region tuple) -> column name, e.g. ACDC's MLV -> Myo."""
    by_value = {tuple(value) if isinstance(value, list) else value: name
                for name, value in dataset_json["labels"].items()}
    names = {}
    for label in labels:
        name = by_value.get(label, str(label))
        names[label] = LABEL_DISPLAY_NAMES.get(name, name)
    return names


def find_methods(results_dir: Path) -> list:
    """Result folders named Trainer__plans__configuration, in display order.

    A folder holding only ``fold_all`` (SimCLR's pretraining, say) trained on no split: it is not a row.
    """
    if not results_dir.is_dir():
        raise InputError(f"no results folder {results_dir}; train with nnUNetv2_train first (or check nnUNet_results)")
    methods = [path.name for path in results_dir.iterdir() if path.is_dir() and len(path.name.split("__")) == 3
               and not _trained_on_all_only(path)]
    if not methods:
        raise InputError(f"no Trainer__plans__configuration folders in {results_dir}; train with nnUNetv2_train first")
    return sorted(methods, key=method_sort_key)


def _trained_on_all_only(method_dir: Path) -> bool:
    folds = [path.name for path in method_dir.glob("fold_*") if path.is_dir()]
    return folds == ["fold_all"]


def trained_folds(method_dir: Path) -> list:
    """Fold numbers whose training finished (checkpoint_final.pth written)."""
    return sorted(int(path.name[len("fold_"):]) for path in method_dir.glob("fold_*")
                  if path.name[len("fold_"):].isdigit() and (path / TRAINED_MARKER).is_file())


@dataclass
class EvaluationSource:
    """Where a fold's predictions and references are: the fold's validation set, or a test set."""
    results_dir: Path
    gt_dir: Path
    test_pred_root: Path = None

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
    return FoldResult(method, fold, budget, seed, {label: summary["mean"][label]["Dice"] for label in labels},
                      foreground["Dice"], foreground["ASSD_mm"], foreground["HD95_mm"])


def evaluate_method(method: str, splits: list, source: EvaluationSource, labels, ignore_label, summaries_dir: Path,
                    num_processes: int):
    """Evaluate the method's trained folds of the table; returns (results, missing folds)."""
    trained = set(trained_folds(source.results_dir / method))
    results, missing = [], []
    for split in splits:
        fold, budget, seed = split["fold"], split["budget"], split["seed"]
        if fold not in trained:
            missing.append(MissingFold(method, fold, budget, seed, f"not trained (no {TRAINED_MARKER})"))
            continue
        pred_dir, cases = source.pred_dir(method, fold), source.cases(split)
        absent = missing_predictions(pred_dir, cases)
        if absent:
            missing.append(MissingFold(method, fold, budget, seed,
                                       f"{len(absent)} of {len(cases)} predictions missing in {pred_dir}"))
            continue
        summary = evaluate_folder(pred_dir, source.gt_dir, labels=labels, ignore_label=ignore_label,
                                  output_file=summaries_dir / f"{method}__fold_{fold}.json",
                                  num_processes=num_processes, cases=cases)
        results.append(fold_result(method, fold, budget, seed, summary, labels))
    return results, missing


def evaluate_zero_shot(pred_dir: Path, splits: list, source: EvaluationSource, labels, ignore_label,
                       summaries_dir: Path, num_processes: int) -> list:
    """A method that trains on nothing: scored once on the report's cases, shown in every budget's block."""
    method = ZERO_SHOT_PREFIX + pred_dir.name
    cases = source.cases(splits[0])
    absent = missing_predictions(pred_dir, cases)
    if absent:
        raise InputError(f"{pred_dir} lacks {len(absent)} of {len(cases)} predictions (e.g. {absent[0]}): run "
                         f"nnunet-autosam zero-shot on the same images the report scores")
    summary = evaluate_folder(pred_dir, source.gt_dir, labels=labels, ignore_label=ignore_label,
                              output_file=summaries_dir / f"zero-shot__{pred_dir.name}.json",
                              num_processes=num_processes, cases=cases)
    return [fold_result(method, None, budget, 0, summary, labels)
            for budget in sorted({split["budget"] for split in splits})]


def mean_and_std(values: list):
    """Mean and sample std over seeds (std NaN with fewer than two seeds, mean NaN with none)."""
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else math.nan)


def table_rows(methods, budgets, results, missing, labels, label_names) -> list:
    """One row per budget and method: mean and std over seeds of each column, and the missing folds."""
    rows = []
    for budget in budgets:
        for method in methods:
            folds = [r for r in results if r.method == method and r.budget == budget]
            row = {"budget": budget, "method": method_display_name(method), "folder": method,
                   "n_seeds": len(folds), "seeds": [r.seed for r in folds],
                   "missing_folds": [m.fold for m in missing if m.method == method and m.budget == budget]}
            columns = {f"Dice_{label_names[label]}": [100 * r.class_dice[label] for r in folds] for label in labels}
            columns["mean_Dice"] = [100 * r.mean_dice for r in folds]
            columns["ASSD_mm"] = [r.assd_mm for r in folds]
            columns["HD95_mm"] = [r.hd95_mm for r in folds]
            for column, values in columns.items():
                row[f"{column}_mean"], row[f"{column}_std"] = mean_and_std(values)
            rows.append(row)
    return rows


def value_columns(label_names: dict) -> list:
    """(row key prefix, table header) of the value columns, in display order."""
    return ([(f"Dice_{name}", name) for name in label_names.values()]
            + [("mean_Dice", "mean Dice"), ("ASSD_mm", "ASSD (mm)"), ("HD95_mm", "HD95 (mm)")])


def format_mean_std(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def budget_heading(budget: int) -> str:
    return f"{budget} labelled patient" + ("" if budget == 1 else "s")


def markdown_report(dataset_name: str, evaluated_on: str, rows, label_names, missing, unmapped) -> str:
    columns = value_columns(label_names)
    lines = [f"# {dataset_name}: few-label results ({evaluated_on})", "",
             "Dice in %, ASSD and HD95 in mm (3D per volume, image spacing); mean ± sample std over seeds; "
             "n = seeds evaluated.", ""]
    for budget in sorted({row["budget"] for row in rows}):
        lines += [f"## {budget_heading(budget)}", "",
                  "| method | " + " | ".join(header for _, header in columns) + " | n | missing folds |",
                  "|---" * (len(columns) + 3) + "|"]
        for row in (r for r in rows if r["budget"] == budget):
            values = [format_mean_std(row[f"{key}_mean"], row[f"{key}_std"]) for key, _ in columns]
            missing_folds = ", ".join(str(fold) for fold in row["missing_folds"]) or "-"
            lines.append(f"| {row['method']} | " + " | ".join(values) + f" | {row['n_seeds']} | {missing_folds} |")
        lines.append("")
    lines += ["## Missing folds", ""]
    lines += ([f"- {method_display_name(m.method)} (`{m.method}`), fold {m.fold} (budget {m.budget}, "
               f"seed {m.seed}): {m.reason}" for m in missing] or ["None."])
    lines += ["", "## Unmapped trained folds (not in the split table)", ""]
    lines += [f"- `{method}` fold {fold}" for method, fold in unmapped] or ["None."]
    return "\n".join(lines) + "\n"


def write_csv_report(rows, label_names, target: Path) -> None:
    stats = [f"{key}_{stat}" for key, _ in value_columns(label_names) for stat in ("mean", "std")]
    fields = ["budget", "method", "folder", "n_seeds", "seeds", *stats, "missing_folds"]
    with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "seeds": " ".join(map(str, row["seeds"])),
                             "missing_folds": " ".join(map(str, row["missing_folds"]))})


def plot_report(rows, dataset_name: str, target: Path) -> None:
    """Mean Dice against labelled patients (log x), one line per method, error bars = std over seeds."""
    import matplotlib  # imported here: the CLI imports every command module, and only this one plots
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({row["budget"] for row in rows})
    figure, axes = plt.subplots(figsize=(10, 4.5))
    for method in dict.fromkeys(row["method"] for row in rows):
        points = [row for row in rows if row["method"] == method and row["n_seeds"] > 0]
        if points:
            axes.errorbar([row["budget"] for row in points], [row["mean_Dice_mean"] for row in points],
                          yerr=[np.nan_to_num(row["mean_Dice_std"]) for row in points],
                          marker="o", capsize=4, label=method)
    axes.set_xscale("log")
    axes.set_xticks(budgets, [str(budget) for budget in budgets])
    axes.minorticks_off()
    axes.set_xlabel("labelled training patients")
    axes.set_ylabel("mean Dice (%)")
    axes.set_title(dataset_name)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the axes: covers no line
    figure.tight_layout()
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=150)
    plt.close(figure)


def build_report(dataset, test_pred_root=None, out_dir=None, num_processes: int = default_num_processes,
                 zero_shot_dirs=()) -> Path:
    """Evaluate every trained fold of every method and write report.md, report.csv and report.png; returns out_dir.

    ``zero_shot_dirs``: folders of `nnunet-autosam zero-shot` predictions for the same images (the
    shared validation cases, or the test set with ``test_pred_root``); each becomes one more method.
    """
    dataset_name = resolve_dataset(dataset)
    preprocessed_dir = nnunet_folder("nnUNet_preprocessed") / dataset_name
    results_dir = nnunet_folder("nnUNet_results") / dataset_name
    splits = load_split_table(preprocessed_dir)["folds"]
    if test_pred_root is None:
        source = EvaluationSource(results_dir, preprocessed_dir / "gt_segmentations")
        evaluated_on, default_out = "validation folds", "autosam_report"
    else:
        source = EvaluationSource(results_dir, nnunet_folder("nnUNet_raw") / dataset_name / "labelsTs",
                                  Path(test_pred_root))
        evaluated_on, default_out = f"test set, predictions in {test_pred_root}", "autosam_report_test"
    if not source.gt_dir.is_dir():
        raise InputError(f"no references in {source.gt_dir}; run nnUNetv2_plan_and_preprocess (validation) "
                         f"or put the test labels in labelsTs")
    out_dir = Path(out_dir) if out_dir is not None else results_dir / default_out
    dataset_json = load_dataset_json(dataset_name)
    labels, ignore_label = labels_from_dataset_json(dataset_json)
    label_names = display_label_names(dataset_json, labels)

    methods = find_methods(results_dir)
    results, missing = [], []
    with atomic_path(out_dir / "summaries") as summaries_dir:  # replaced whole: no stale folds from earlier runs
        summaries_dir.mkdir()
        for method in methods:
            method_results, method_missing = evaluate_method(method, splits, source, labels, ignore_label,
                                                             summaries_dir, num_processes)
            results += method_results
            missing += method_missing
        for pred_dir in zero_shot_dirs:
            results += evaluate_zero_shot(Path(pred_dir), splits, source, labels, ignore_label, summaries_dir,
                                          num_processes)
    table_folds = {split["fold"] for split in splits}
    unmapped = [(method, fold) for method in methods for fold in trained_folds(results_dir / method)
                if fold not in table_folds]

    methods += [ZERO_SHOT_PREFIX + Path(pred_dir).name for pred_dir in zero_shot_dirs]
    rows = table_rows(methods, sorted({split["budget"] for split in splits}), results, missing, labels, label_names)
    write_text(markdown_report(dataset_name, evaluated_on, rows, label_names, missing, unmapped), out_dir / "report.md")
    write_csv_report(rows, label_names, out_dir / "report.csv")
    plot_report(rows, dataset_name, out_dir / "report.png")
    return out_dir


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "report", help="the paper's few-label table (Dice per class, mean Dice, ASSD, HD95) over all trained folds",
        description="Evaluate every trained fold of every Trainer__plans__configuration folder of a dataset, map "
                    f"folds to (budget, seed) with {SPLIT_TABLE_NAME}, and write report.md, report.csv and report.png.")
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name, e.g. 27 or Dataset027_ACDC")
    parser.add_argument("--test-pred-root", type=Path, default=None,
                        help="evaluate test-set predictions in DIR/Trainer__plans__configuration/fold_N/ against "
                             "nnUNet_raw/DatasetXXX/labelsTs instead of the validation folds")
    parser.add_argument("--zero-shot", type=Path, nargs="+", default=(), metavar="DIR",
                        help="folders of `nnunet-autosam zero-shot` predictions of the same images; each is "
                             "shown as one more method in every budget's block")
    parser.add_argument("-o", "--out-dir", type=Path, default=None,
                        help="output folder (default: nnUNet_results/DatasetXXX/autosam_report, "
                             "or autosam_report_test with --test-pred-root)")
    parser.add_argument("-np", "--num-processes", type=int, default=default_num_processes,
                        help=f"worker processes per fold evaluation (default: {default_num_processes})")
    parser.set_defaults(func=run)


def run(args):
    out_dir = build_report(args.dataset, test_pred_root=args.test_pred_root, out_dir=args.out_dir,
                           num_processes=args.num_processes, zero_shot_dirs=args.zero_shot)
    print((out_dir / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {out_dir / 'report.md'}, report.csv and report.png")
