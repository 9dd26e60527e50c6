"""The report's table as markdown and CSV, and its plot: mean Dice per method against the labelled budget."""

import csv
import math
from pathlib import Path

import numpy as np

from nnunet_autosam.evaluation.methods import method_display_name
from nnunet_autosam.utilities.atomic import atomic_path


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
            row = {
                "budget": budget,
                "method": method_display_name(method),
                "folder": method,
                "n_seeds": len(folds),
                "seeds": [r.seed for r in folds],
                "missing_folds": [m.fold for m in missing if m.method == method and m.budget == budget],
            }
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
    return [(f"Dice_{name}", name) for name in label_names.values()] + [
        ("mean_Dice", "mean Dice"),
        ("ASSD_mm", "ASSD (mm)"),
        ("HD95_mm", "HD95 (mm)"),
    ]


def format_mean_std(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def budget_heading(budget: int) -> str:
    return f"{budget} labelled patient" + ("" if budget == 1 else "s")


def markdown_report(dataset_name: str, evaluated_on: str, rows, label_names, missing, unmapped) -> str:
    columns = value_columns(label_names)
    lines = [
        f"# {dataset_name}: few-label results ({evaluated_on})",
        "",
        "Dice in %, ASSD and HD95 in mm (3D per volume, image spacing); mean ± sample std over seeds; "
        "n = seeds evaluated.",
        "",
    ]
    for budget in sorted({row["budget"] for row in rows}):
        lines += [
            f"## {budget_heading(budget)}",
            "",
            "| method | " + " | ".join(header for _, header in columns) + " | n | missing folds |",
            "|---" * (len(columns) + 3) + "|",
        ]
        for row in (r for r in rows if r["budget"] == budget):
            values = [format_mean_std(row[f"{key}_mean"], row[f"{key}_std"]) for key, _ in columns]
            missing_folds = ", ".join(str(fold) for fold in row["missing_folds"]) or "-"
            lines.append(f"| {row['method']} | " + " | ".join(values) + f" | {row['n_seeds']} | {missing_folds} |")
        lines.append("")
    lines += ["## Missing folds", ""]
    lines += [
        f"- {method_display_name(m.method)} (`{m.method}`), fold {m.fold} (budget {m.budget}, "
        f"seed {m.seed}): {m.reason}"
        for m in missing
    ] or ["None."]
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
            writer.writerow(
                {
                    **row,
                    "seeds": " ".join(map(str, row["seeds"])),
                    "missing_folds": " ".join(map(str, row["missing_folds"])),
                }
            )


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
            axes.errorbar(
                [row["budget"] for row in points],
                [row["mean_Dice_mean"] for row in points],
                yerr=[np.nan_to_num(row["mean_Dice_std"]) for row in points],
                marker="o",
                capsize=4,
                label=method,
            )
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
