"""`nnunet-autosam compare --publish DIR`: what has finished, scored and written up where a reader can check it.

DIR gets table.md (how it was made, the claims checked, the report's table), table.csv, plot.png,
validation_curves.png and .csv (nnU-Net's pseudo-Dice per epoch from every fold's training log),
commands.md (the commands as invoked and every command they ran), and timings.json (per run, with the
machine and the code's commit). Paths under the output folder read OUTPUT.
"""

import csv
import json
import math
import re
import shutil
from pathlib import Path

from nnunet_autosam.comparison.dataset import TEST_FOLDERS, test_units
from nnunet_autosam.comparison.protocol import METHODS, ZERO_SHOT
from nnunet_autosam.comparison.provenance import code_version, machine
from nnunet_autosam.evaluation.report import dataset_title as report_title
from nnunet_autosam.evaluation.report import display_label_names
from nnunet_autosam.evaluation.report_tables import budget_heading
from nnunet_autosam.utilities.atomic import atomic_path, write_json, write_text

PUBLISHED = ("table.md", "table.csv", "plot.png", "validation_curves.png", "validation_curves.csv")
EPOCH_LINE = re.compile(r": Epoch (\d+)\s*$")
PSEUDO_DICE_LINE = re.compile(r": Pseudo dice \[(.*)\]")
NUMBER = re.compile(r"nan|[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


def publish(experiment, target: Path) -> None:
    """Score what has finished and write every published file to ``target``."""
    prepared = experiment.load_prepared()
    plan = experiment.plan_of(prepared)
    report_dir = experiment.root / "report"
    zero_shot = (
        ["--zero-shot", str(experiment.zero_shot_dir())]
        if (experiment.runs_dir / f"{ZERO_SHOT}.json").is_file()
        else []
    )
    test_labels = ["--test-labels", str(plan.test_labels)] if plan.test_kind == TEST_FOLDERS else []
    experiment.workspace.plugin(
        "report",
        "-d",
        prepared["dataset"],
        "--test-pred-root",
        str(experiment.root / "test_predictions"),
        *test_labels,
        *zero_shot,
        "-o",
        str(report_dir),
        "-np",
        "2",
    )
    records = sorted(
        (json.loads(path.read_text()) for path in experiment.runs_dir.glob("*.json")), key=lambda r: r["run"]
    )
    target.mkdir(parents=True, exist_ok=True)
    curves = validation_curves(experiment, prepared, records)
    table = (
        header(experiment, prepared, records)
        + claims(experiment.args, report_dir / "report.csv")
        + (report_dir / "report.md").read_text(encoding="utf-8")
    )
    write_text(table.replace(str(experiment.root), "OUTPUT"), target / "table.md")
    for source, name in (("report.csv", "table.csv"), ("report.png", "plot.png")):
        with atomic_path(target / name) as tmp:
            shutil.copyfile(report_dir / source, tmp)
    write_curves(curves, dataset_title(experiment), target)
    write_text(commands(experiment), target / "commands.md")
    write_json(
        {"prepare_s": prepared["wall_s"], "machine": machine(), "code": code_version(), "runs": records},
        target / "timings.json",
    )
    print(f"published {target}: {', '.join(PUBLISHED)}, commands.md, timings.json")


def dataset_json(experiment) -> dict:
    return json.loads((experiment.root / "nnUNet_raw" / experiment.workspace.dataset_name / "dataset.json").read_text())


def dataset_title(experiment) -> str:
    return report_title(experiment.workspace.dataset_name, dataset_json(experiment))


def channels_line(experiment, prepared: dict, description: dict) -> list:
    """For a dataset of several channels: which, and how the SAM plans feed them to the encoder."""
    names = list((description.get("channel_names") or {}).values())
    if len(names) < 2:
        return []
    line = f"- Channels: {', '.join(names)}"
    plans_file = (
        experiment.root / "nnUNet_preprocessed" / experiment.workspace.dataset_name / f"{prepared['sam_plans']}.json"
    )
    if plans_file.is_file():
        encoder = json.loads(plans_file.read_text())["configurations"]["2d"].get("sam_encoder") or {}
        line += f"; the SAM encoder takes them as `{encoder.get('channels')}` (nnunet-autosam plans --channels)"
    return [line]


def header(experiment, prepared: dict, records: list) -> str:
    args, schedule = experiment.args, experiment.schedule
    plan = experiment.plan_of(prepared)
    description = dataset_json(experiment)
    where, tested = test_units(plan)
    word = "case" if where == str(plan.test_labels) or where.startswith("the dataset's own") else "patient"
    word += "" if len(tested) == 1 else "s"
    classes = display_label_names(description, [value for value in description["labels"].values() if value])
    by_method: dict = {}
    for record in records:
        by_method[record["method"]] = by_method.get(record["method"], 0) + record["wall_s"]
    machines = sorted({f"{record['machine']} ({record['device']})" for record in records if "machine" in record})
    total = prepared["wall_s"] + sum(by_method.values())
    derived = description.get("derived_from")
    one_seed = [method for method in schedule.one_seed_methods if method in args.methods]
    lines = [
        f"# Few-label {description.get('name') or plan.folder.name} on `{args.encoder}`: "
        f"test set of {len(tested)} {word}",
        "",
        f"- Dataset: {dataset_title(experiment)}"
        + (f", derived from {derived['dataset']}" if derived else "")
        + f"; classes (dataset.json): {', '.join(classes.values())}",
        f"- Schedule: every trained method {schedule.describe()} at batch {prepared['batch_size']}"
        + (f"; {', '.join(one_seed)} on seed 0 only" if one_seed else "")
        + ". Frozen-encoder heads train from the embedding cache (no augmentation); nnU-Net and ft-all augment "
        "as nnU-Net does. Prediction: nnUNetv2_predict, no test-time mirroring.",
        *channels_line(experiment, prepared, description),
        f"- Test {word} ({where}, never used for any choice): {' '.join(tested)}",
        f"- Machine: {'; '.join(machines) or machine()}",
        f"- Code: {code_version() or 'an installed copy (no git checkout)'}",
        f"- Wall time: preparation {prepared['wall_s'] / 60:.1f} min; "
        + ", ".join(f"{method} {seconds / 60:.1f} min" for method, seconds in sorted(by_method.items()))
        + f"; total {total / 3600:.2f} h",
        "- Commands: commands.md; per-run times: timings.json; validation curves: validation_curves.png",
        "",
        "",
    ]
    return "\n".join(lines)


def claims(args, report_csv: Path) -> str:
    """The claims set for AutoSAM at the smallest budget, checked against the scored table, so that the
    table itself says when one fails."""
    budget = min(args.budgets)
    with open(report_csv, newline="", encoding="utf-8") as f:
        rows = {row["folder"].split("__")[0]: row for row in csv.DictReader(f) if row["budget"] == str(budget)}
    autosam, nnunet = (rows.get(METHODS[method].trainer) for method in ("autosam", "nnunet"))
    title = f"## Claims at {budget_heading(budget)}, as measured"
    if not (autosam and nnunet and int(autosam["n_seeds"]) and int(nnunet["n_seeds"])):
        return f"{title}\n\nNot measured: AutoSAM and stock nnU-Net need a scored fold each.\n\n"
    dice, reference = float(autosam["mean_Dice_mean"]), float(nnunet["mean_Dice_mean"])
    seeds = f"{autosam['n_seeds']} of {args.seeds} seeds"
    lines = [title, ""]
    if args.claim_min_dice is not None:
        lines.append(
            f"- AutoSAM's mean Dice, averaged over the seeds, is at least {args.claim_min_dice:g}: "
            f"{'holds' if dice >= args.claim_min_dice else '**fails**'} ({dice:.1f} over {seeds})"
        )
    lines.append(
        f"- AutoSAM beats stock nnU-Net at the same budget and schedule: "
        f"{'holds' if dice > reference else '**fails**'} ({dice:.1f} against {reference:.1f})"
    )
    return "\n".join([*lines, "", ""])


def pseudo_dice_per_epoch(log_files) -> dict:
    """Epoch -> mean over classes of nnU-Net's pseudo-Dice, from its training log(s) of one fold."""
    curve, epoch = {}, None
    for log_file in sorted(log_files):
        for line in Path(log_file).read_text(encoding="utf-8", errors="replace").splitlines():
            if found := EPOCH_LINE.search(line):
                epoch = int(found[1])
            elif (found := PSEUDO_DICE_LINE.search(line)) and epoch is not None:
                values = [float(v) for v in NUMBER.findall(re.sub(r"np\.float\d+\(", "", found[1]))]
                finite = [v for v in values if not math.isnan(v)]
                curve[epoch] = sum(finite) / len(finite) if finite else math.nan
    return curve


def validation_curves(experiment, prepared: dict, records: list) -> list:
    """(method, fold, budget, seed, {epoch: pseudo-Dice}) of every finished trained run."""
    folds = {
        f["fold"]: f for f in json.loads((experiment.preprocessed() / "few_label_splits.json").read_text())["folds"]
    }
    results = experiment.root / "nnUNet_results" / experiment.workspace.dataset_name
    curves = []
    for record in records:
        if record.get("fold") is None or record["method"] not in METHODS:
            continue
        fold_dir = results / experiment.folder(record["method"], prepared) / f"fold_{record['fold']}"
        split = folds[record["fold"]]
        curve = pseudo_dice_per_epoch(fold_dir.glob("training_log_*.txt"))
        curves.append((record["method"], record["fold"], split["budget"], split["seed"], curve))
    return curves


def write_curves(curves: list, title: str, target: Path) -> None:
    """validation_curves.csv (one row per fold and epoch) and validation_curves.png (one panel per budget)."""
    with atomic_path(target / "validation_curves.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "fold", "budget", "seed", "epoch", "pseudo_dice"])
        for method, fold, budget, seed, curve in curves:
            writer.writerows(
                [method, fold, budget, seed, epoch, f"{dice:.4f}"] for epoch, dice in sorted(curve.items())
            )
    import matplotlib  # imported here: the CLI imports every command module, and only publishing plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    budgets = sorted({budget for _, _, budget, _, _ in curves}) or [0]
    figure, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets) + 2, 4), squeeze=False)
    colours = {method: f"C{index}" for index, method in enumerate(dict.fromkeys(c[0] for c in curves))}
    for axis, budget in zip(axes[0], budgets):
        for method, _, curve_budget, _, curve in curves:
            if curve_budget == budget and curve:
                epochs = sorted(curve)
                axis.plot(epochs, [100 * curve[e] for e in epochs], marker="o", color=colours[method], label=method)
        axis.set_title(f"{title}: {budget_heading(budget)}", fontsize="small")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel("validation pseudo-Dice (%)")
        axis.grid(alpha=0.3)
        handles, labels = axis.get_legend_handles_labels()
        unique = dict(zip(labels, handles))  # one entry per method, whatever its seeds
        if unique:
            axis.legend(unique.values(), unique.keys(), fontsize="small")
    figure.tight_layout()
    with atomic_path(target / "validation_curves.png") as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


def commands(experiment) -> str:
    invocations = (experiment.root / "invocations.log").read_text(encoding="utf-8")
    stock = (experiment.root / "commands.log").read_text(encoding="utf-8")
    settings = "".join(f"export {key}={value}\n" for key, value in experiment.workspace.settings.items())
    return (
        "# Commands\n\nThe comparison, as invoked (time, machine, command):\n\n```\n"
        + invocations
        + "```\n\nWhat it ran, in order (OUTPUT is its --output folder; nnUNet_raw, nnUNet_preprocessed and "
        "nnUNet_results lie under it, and nnUNet_extTrainer is `nnunet-autosam trainer-dir`):\n\n```\n"
        + settings
        + stock
        + "```\n"
    ).replace(str(experiment.root), "OUTPUT")
