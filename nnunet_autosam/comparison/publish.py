"""`nnunet-autosam compare --publish DIR`: what has finished, scored and written up where a reader can check it.

DIR gets table.md (how it was made, the claims checked, each method's steps as its validation chose them, the
report's table), table.csv, plot.png, validation_curves.png and .csv (nnU-Net's pseudo-Dice per epoch, from the
training log of every fold that predicted the test set),
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
from nnunet_autosam.comparison.protocol import METHODS, PSEUDO, ZERO_SHOT, Line, run_key
from nnunet_autosam.comparison.provenance import code_version, machine
from nnunet_autosam.evaluation.metrics import labels_from_dataset_json
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
    args, prepared = experiment.args, experiment.load_prepared()
    plan = experiment.plan_of(prepared)
    report_dir = experiment.root / "report"
    zero_shot = (
        ["--zero-shot", str(experiment.zero_shot_dir())]
        if (experiment.runs_dir / f"{ZERO_SHOT}.json").is_file()
        else []
    )
    test_labels = ["--test-labels", str(plan.test_labels)] if plan.test_kind == TEST_FOLDERS else []
    experiment.chosen_workspace().plugin(
        "report",
        "-d",
        prepared["dataset"],
        "--test-pred-root",
        str(experiment.test_predictions_root()),
        *test_labels,
        *zero_shot,
        "-o",
        str(report_dir),
        "-np",
        "2",
    )
    records = read_records(experiment.runs_dir)
    trainings = read_records(experiment.runs_dir / "training")
    students = [record for record in read_records(experiment.runs_dir / "students") if "wall_s" in record]
    target.mkdir(parents=True, exist_ok=True)
    curves = validation_curves(experiment, records)
    table = (
        header(experiment, prepared, records, trainings, students)
        + claims(args, report_dir, experiment.folds(), folders(experiment, prepared), chosen_variants(experiment))
        + schedules(experiment, trainings, records)
        + pseudo_label_quality(students)
        + (report_dir / "report.md").read_text(encoding="utf-8")
    )
    write_text(table.replace(str(experiment.root), "OUTPUT"), target / "table.md")
    for source, name in (("report.csv", "table.csv"), ("report.png", "plot.png")):
        with atomic_path(target / name) as tmp:
            shutil.copyfile(report_dir / source, tmp)
    write_curves(curves, dataset_title(experiment), target)
    write_text(commands(experiment), target / "commands.md")
    write_json(
        {
            "prepare_s": prepared["wall_s"],
            "machine": machine(),
            "code": code_version(),
            "runs": records,
            "trainings": trainings,
            "student_datasets": students,
        },
        target / "timings.json",
    )
    print(f"published {target}: {', '.join(PUBLISHED)}, commands.md, timings.json")


def folders(experiment, prepared: dict) -> dict:
    """Method -> its nnU-Net results folder name, as the report's rows name them."""
    return {method: experiment.folder(method, prepared) for method in experiment.args.methods if method in METHODS}


def read_records(folder: Path) -> list:
    return sorted((json.loads(path.read_text()) for path in folder.glob("*.json")), key=lambda r: r["run"])


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


def cache_mode(experiment, prepared: dict) -> str:
    plans_file = experiment.preprocessed() / f"{prepared['sam_plans']}.json"
    if not plans_file.is_file():
        return "off"
    encoder = json.loads(plans_file.read_text())["configurations"]["2d"].get("sam_encoder") or {}
    return str(encoder.get("embedding_cache"))


def head_training(mode: str) -> str:
    if mode.startswith("cache_views"):
        views = mode.partition(":")[2]
        return f"from {views} views of each slice augmented as nnU-Net augments, embedded once ({mode})"
    if mode == "cache":
        return "from each slice's embedded centre patch, without augmentation (cache)"
    return "on the fly, augmented as nnU-Net augments"


def wall_by_method(records: list, trainings: list, students: list) -> dict:
    """Method -> seconds: every training it ran (its ladder's included), its test predictions and, for the
    pseudo-label method, the making of its student datasets (its teachers predicting, nnU-Net preprocessing)."""
    seconds: dict = {PSEUDO: sum(record["wall_s"] for record in students)} if students else {}
    for record in trainings:
        seconds[record["method"]] = seconds.get(record["method"], 0.0) + record["train_s"]
    for record in records:
        seconds[record["method"]] = seconds.get(record["method"], 0.0) + record.get("predict_s", 0.0)
    return seconds


def header(experiment, prepared: dict, records: list, trainings: list, students: list) -> str:
    args, schedule, ladder = experiment.args, experiment.schedule, experiment.ladder
    plan = experiment.plan_of(prepared)
    description = dataset_json(experiment)
    where, tested = test_units(plan)
    word = "case" if where == str(plan.test_labels) or where.startswith("the dataset's own") else "patient"
    word += "" if len(tested) == 1 else "s"
    classes = display_label_names(description, [value for value in description["labels"].values() if value])
    by_method = wall_by_method(records, trainings, students)
    machines = sorted({f"{record['machine']} ({record['device']})" for record in records if "machine" in record})
    total = prepared["wall_s"] + sum(by_method.values())
    derived = description.get("derived_from")
    one_seed = [method for method in schedule.one_seed_methods if method in args.methods]
    bounds = [f"{method} from {steps}" for method, steps in ladder.starts.items()]
    bounds += [f"{method} at most {steps}" for method, steps in ladder.caps.items()]
    lines = [
        f"# Few-label {description.get('name') or plan.folder.name} on `{args.encoder}`: "
        f"test set of {len(tested)} {word}",
        "",
        f"- Dataset: {dataset_title(experiment)}"
        + (f", derived from {derived['dataset']}" if derived else "")
        + f"; classes (dataset.json): {', '.join(classes.values())}",
        f"- Schedule: batch {prepared['batch_size']}, {schedule.iterations} iterations per epoch; each method's "
        f"steps chosen on validation from the ladder {' '.join(map(str, ladder.rungs))}"
        + (f" ({', '.join(bounds)})" if bounds else "")
        + f" (below: S is enough when 2S adds less than {ladder.plateau_points:g} points)"
        + (f"; {', '.join(one_seed)} on seed 0 only" if one_seed else "")
        + f". Frozen-encoder heads train {head_training(cache_mode(experiment, prepared))}; nnU-Net and ft-all "
        "augment on the fly as nnU-Net does. Prediction: nnUNetv2_predict, no test-time mirroring.",
        *channels_line(experiment, prepared, description),
        f"- Test {word} ({where}, never used for any choice): {' '.join(tested)}",
        f"- Machine: {'; '.join(machines) or machine()}",
        f"- Code: {code_version() or 'an installed copy (no git checkout)'}",
        f"- CPU time (wall, trainings of the ladder included): preparation {prepared['wall_s'] / 60:.1f} min; "
        + ", ".join(f"{method} {seconds / 3600:.2f} h" for method, seconds in sorted(by_method.items()))
        + f"; total {total / 3600:.2f} h",
        "- Commands: commands.md; per-run times: timings.json; validation curves: validation_curves.png",
        "",
        "",
    ]
    return "\n".join(lines)


def fold_dice(report_dir: Path, folder: str, fold: int) -> float | None:
    """A fold's test mean foreground Dice in %, from the report's per-fold summary."""
    summary = report_dir / "summaries" / f"{folder}__fold_{fold}.json"
    if not summary.is_file():
        return None
    return 100 * json.loads(summary.read_text())["foreground_mean"]["Dice"]


def claims(args, report_dir: Path, folds: list, folders: dict, variants: dict | None = None) -> str:
    """At each budget: is the best trained SAM method above nnU-Net on the mean over seeds, and in how many paired
    seeds; at the smallest, does AutoSAM reach ``--claim-min-dice``; is the pseudo-label student (its variant
    chosen per budget: ``variants``) above labelled-only nnU-Net and above its teachers. Checked against the scored
    table, so that the table itself says when one fails."""
    with open(report_dir / "report.csv", newline="", encoding="utf-8") as f:
        rows = [row for row in csv.DictReader(f) if row["n_seeds"] not in ("", "0")]
    method_of = {folder: method for method, folder in folders.items()}
    lines = ["## Claims, as measured", ""]
    for budget in sorted(args.budgets):
        by_method = {
            method_of[row["folder"]]: row for row in rows if row["budget"] == str(budget) and row["folder"] in method_of
        }
        title = f"- {budget_heading(budget)}:"
        if PSEUDO in by_method and (variant := (variants or {}).get(budget)):
            lines.append(f"{title} {student_claim(by_method, variant)}")
        sam = {method: row for method, row in by_method.items() if METHODS[method].sam_plans}
        if "nnunet" not in by_method or not sam:
            lines.append(f"{title} not measured (nnU-Net and a trained SAM method need a scored fold each)")
            continue
        nnunet = float(by_method["nnunet"]["mean_Dice_mean"])
        best = max(sam, key=lambda method: float(sam[method]["mean_Dice_mean"]))
        dice = float(sam[best]["mean_Dice_mean"])
        paired = []
        for fold in (f for f in folds if f["budget"] == budget):
            sam_dice, nnunet_dice = (fold_dice(report_dir, folders[m], fold["fold"]) for m in (best, "nnunet"))
            if sam_dice is not None and nnunet_dice is not None:
                paired.append(sam_dice > nnunet_dice)
        lines.append(
            f"{title} the best trained SAM method ({best}, {dice:.1f} over {sam[best]['n_seeds']} seeds) is above "
            f"nnU-Net ({nnunet:.1f} over {by_method['nnunet']['n_seeds']} seeds): "
            f"{'holds' if dice > nnunet else '**fails**'}; above it in {sum(paired)} of {len(paired)} paired seeds"
        )
        if budget == min(args.budgets) and args.claim_min_dice is not None and "autosam" in by_method:
            autosam = float(by_method["autosam"]["mean_Dice_mean"])
            lines.append(
                f"{title} AutoSAM's mean Dice, averaged over the seeds, is at least {args.claim_min_dice:g}: "
                f"{'holds' if autosam >= args.claim_min_dice else '**fails**'} "
                f"({autosam:.1f} over {by_method['autosam']['n_seeds']} of {args.seeds} seeds)"
            )
    lines.append("- Zero-shot SAM is left out of these claims: its box prompts come from the test labels.")
    return "\n".join([*lines, "", ""])


def student_claim(by_method: dict, variant) -> str:
    """Whether the pseudo-label student beats labelled-only nnU-Net and each of its teachers, on the mean over seeds."""

    def mean(method: str) -> str:
        row = by_method[method]
        return f"{float(row['mean_Dice_mean']):.1f} over {row['n_seeds']} seeds"

    student = float(by_method[PSEUDO]["mean_Dice_mean"])
    checks = []
    for rival in ("nnunet", *variant.teachers):
        label = "labelled-only nnU-Net" if rival == "nnunet" else f"its teacher {rival}"
        if rival in by_method:
            held = "holds" if student > float(by_method[rival]["mean_Dice_mean"]) else "**fails**"
            checks.append(f"above {label} ({mean(rival)}): {held}")
        else:
            checks.append(f"above {label}: not measured")
    return (
        f"nnU-Net + SAM pseudo-labels ({variant.text}; it learns from the fold's unlabelled units too, "
        f"{mean(PSEUDO)}) is {'; '.join(checks)}"
    )


def schedules(experiment, trainings: list, records: list) -> str:
    """Each method's climb on seed 0 (validation mean Dice per rung), its S, and every seed's validation at S."""
    ladder = experiment.ladder
    lines = [
        "## Steps per method, chosen on validation",
        "",
        f"Seed 0 of each method and budget trained at each rung until 2S steps added less than "
        f"{ladder.plateau_points:g} points of mean Dice over S on the shared validation patients (nnU-Net's final "
        "validation of the last checkpoint; the test set plays no part); every seed then trained at S. Validation "
        "mean Dice in %; CPU hours of the line's trainings and test predictions.",
        "",
        "| method | budget | seed 0 per rung (steps: Dice) | S | 2S adds | validation Dice at S, per seed | CPU h |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in (m for m in experiment.args.methods if m in METHODS):
        for budget in sorted(experiment.args.budgets):
            line_folds = experiment.line_folds(Line(method, budget))
            variant = experiment.chosen_variant(line_folds[0]["fold"]) if method == PSEUDO else None
            key = run_key(method, variant)
            dice = experiment.validation_dice(key, line_folds[0]["fold"]) if method != PSEUDO or variant else {}
            if not dice:
                continue
            choice = ladder.choice(method, dice)
            if choice is None:
                chosen, gain = "climbing", ""
            elif choice.plateau_shown:
                chosen, gain = str(choice.steps), f"{dice[2 * choice.steps] - dice[choice.steps]:+.1f}"
            else:
                chosen, gain = str(choice.steps), "top rung: no plateau shown"
            fold_ids = {fold["fold"] for fold in line_folds}
            at_s = [
                f"{json.loads(path.read_text())['val_dice']:.1f}"
                for fold in line_folds
                if choice and (path := experiment.training_record(key, fold["fold"], choice.steps)).is_file()
            ]
            seconds = sum(r["train_s"] for r in trainings if r["method"] == method and r.get("fold") in fold_ids)
            seconds += sum(r["predict_s"] for r in records if r["method"] == method and r.get("fold") in fold_ids)
            rungs = ", ".join(f"{steps}: {value:.1f}" for steps, value in sorted(dice.items()))
            name = f"{method} ({variant.text})" if variant else method
            lines.append(
                f"| {name} | {budget} | {rungs} | {chosen} | {gain} | {' / '.join(at_s)} | {seconds / 3600:.2f} |"
            )
    return "\n".join([*lines, "", *variant_lines(experiment), ""])


def chosen_variants(experiment) -> dict:
    """Budget -> the pseudo-label variant its seed 0 chose (None while choosing); empty without the method."""
    if PSEUDO not in experiment.args.methods:
        return {}
    return {
        budget: experiment.chosen_variant(experiment.line_folds(Line(PSEUDO, budget))[0]["fold"])
        for budget in sorted(experiment.args.budgets)
    }


def variant_lines(experiment) -> list:
    """How the pseudo-label variant was chosen: each one's seed-0 validation Dice at the method's lowest rung."""
    if PSEUDO not in experiment.args.methods:
        return []
    rung = experiment.ladder.rungs_for(PSEUDO)[0]
    lines = [
        f"Pseudo-label variants (TEACHERS:MIN_CONFIDENCE:LABELLED_WEIGHT), seed 0's validation mean Dice at {rung} "
        "steps; the best one climbed the ladder:",
        "",
    ]
    for budget, chosen in chosen_variants(experiment).items():
        dice = experiment.variant_dice(experiment.line_folds(Line(PSEUDO, budget))[0]["fold"])
        found = [f"{variant.text} {value:.1f}" + (" (chosen)" * (variant == chosen)) for variant, value in dice.items()]
        lines.append(f"- {budget_heading(budget)}: {', '.join(found) or 'none trained yet'}")
    return [*lines, ""]


def pseudo_label_quality(records: list) -> str:
    """Each student dataset's (``records``) pseudo-labels against the real labels of its unlabelled units, as
    ``score_pseudo_labels`` scored them when the dataset was made: a diagnostic of the teachers, used by no choice."""
    if not records:
        return ""
    lines = [
        "## Pseudo-labels against the real labels (a diagnostic, used for no choice)",
        "",
        "Each student dataset's labels of its fold's unlabelled units, scored against those units' own labels, "
        "which nothing else reads; voxels set to ignore (below the variant's confidence) are left out.",
        "",
        "| student dataset | fold | variant | unlabelled cases | ignored voxels % | Dice of the rest | made in h |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in records:
        dice = record["pseudo_label_dice"]
        shown = f"{dice:.1f}" if dice is not None else "n/a"
        lines.append(
            f"| Dataset{record['dataset_id']:03d}_{record['run']} | {record['fold']} | {record['variant']} | "
            f"{record['unlabelled']} | {record['ignored_percent']:.1f} | {shown} | {record['wall_s'] / 3600:.2f} |"
        )
    return "\n".join([*lines, "", ""])


def score_pseudo_labels(student: Path, source: Path) -> dict:
    """The mean over unlabelled cases of their pseudo-labels' mean foreground Dice against the source's real labels
    (in %, None where no class is scored), and the share of voxels set to ignore. Scored once, when the student
    dataset is made, so that the figures travel with ``runs/`` and the table needs no dataset of another machine."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    made = json.loads((student / "pseudo_labels.json").read_text())
    description = json.loads((student / "dataset.json").read_text())
    classes, ignore = labels_from_dataset_json(description)
    ending = description["file_ending"]
    per_case = []
    for case in made["unlabelled"]:
        # the pseudo-label is the "reference": nnU-Net leaves out a reference's ignore voxels; Dice is symmetric
        scored = compute_metrics(
            str(student / "labelsTr" / f"{case}{ending}"),
            str(source / "labelsTr" / f"{case}{ending}"),
            SimpleITKIO(),
            classes,
            ignore,
        )["metrics"]
        finite = [m["Dice"] for m in scored.values() if not math.isnan(m["Dice"])]
        if finite:
            per_case.append(sum(finite) / len(finite))
    ignored = 100 * sum(made["ignored_fraction"].values()) / max(len(made["ignored_fraction"]), 1)
    return {
        "pseudo_label_dice": round(100 * sum(per_case) / len(per_case), 2) if per_case else None,
        "ignored_percent": round(ignored, 2),
    }


def started_at(log_file) -> tuple:
    """When nnU-Net began a training log, from its name (training_log_YYYY_M_D_HH_MM_SS.txt), comparable as numbers.

    Why: the month and day are not zero-padded, so by name training_log_2026_12_10_... sorts before ..._12_9_....
    """
    return tuple(int(number) for number in re.findall(r"\d+", Path(log_file).name))


def pseudo_dice_per_epoch(log_files) -> dict:
    """Epoch -> mean over classes of nnU-Net's pseudo-Dice, from its training log(s) of one fold.

    A resumed training repeats the epochs after its last checkpoint in a later log, whose figures win.
    """
    curve, epoch = {}, None
    for log_file in sorted(log_files, key=started_at):
        for line in Path(log_file).read_text(encoding="utf-8", errors="replace").splitlines():
            if found := EPOCH_LINE.search(line):
                epoch = int(found[1])
            elif (found := PSEUDO_DICE_LINE.search(line)) and epoch is not None:
                values = [float(v) for v in NUMBER.findall(re.sub(r"np\.float\d+\(", "", found[1]))]
                finite = [v for v in values if not math.isnan(v)]
                curve[epoch] = sum(finite) / len(finite) if finite else math.nan
    return curve


def validation_curve(fold_dir: Path, iterations: int) -> dict:
    """{training step: pseudo-Dice, None for NaN} at the end of each of the fold's epochs of ``iterations`` steps,
    from its training logs; kept in the training's record, since the logs stay on the machine that trained."""
    per_epoch = pseudo_dice_per_epoch(fold_dir.glob("training_log_*.txt"))
    return {str((epoch + 1) * iterations): None if math.isnan(d) else round(d, 4) for epoch, d in per_epoch.items()}


def validation_curves(experiment, records: list) -> list:
    """(method, fold, budget, seed, {training step: pseudo-Dice}) of every run that predicted the test set, from the
    record of the training it predicted with."""
    folds = {f["fold"]: f for f in experiment.folds()}
    curves = []
    for record in records:
        if record.get("fold") is None or record["method"] not in METHODS:
            continue
        split = folds[record["fold"]]
        training = json.loads((experiment.runs_dir / "training" / f"{record['training']}.json").read_text())
        curve = {int(step): math.nan if dice is None else dice for step, dice in training["validation_curve"].items()}
        curves.append((record["method"], record["fold"], split["budget"], split["seed"], curve))
    return curves


def write_curves(curves: list, title: str, target: Path) -> None:
    """validation_curves.csv (one row per fold and epoch) and validation_curves.png (one panel per budget)."""
    with atomic_path(target / "validation_curves.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "fold", "budget", "seed", "step", "pseudo_dice"])
        for method, fold, budget, seed, curve in curves:
            writer.writerows([method, fold, budget, seed, step, f"{dice:.4f}"] for step, dice in sorted(curve.items()))
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
                steps = sorted(curve)
                axis.plot(steps, [100 * curve[step] for step in steps], color=colours[method], label=method, alpha=0.8)
        axis.set_title(f"{title}: {budget_heading(budget)}", fontsize="small")
        axis.set_xlabel("training step (each method at its chosen S, every seed)")
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
