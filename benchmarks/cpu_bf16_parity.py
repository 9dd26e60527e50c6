"""Quality parity of CPU bf16: one fold of the few-label ACDC experiment trained twice from one seed, once in fp32
(``AUTOSAM_CPU_BF16=0``) and once under bf16 autocast (``=1``), each predicting the same held-out patients.

Unseeded, two identical trainings of this fold moved AutoSAM's test Dice by 20 points (docs/cpu_precision.md), so a
1-point difference between precisions could not be told from the luck of the draw. Here both trainings run with
``AUTOSAM_SEED`` and augment in the main process (``nnUNet_n_proc_DA=0``, as every CPU training here does): they
start from the same weights and draw the same batches, and what differs is the arithmetic. The frozen encoder runs
as the caller's ``AUTOSAM_CPU_BF16_ENCODER`` says (default fp32 in both, so both heads read the same embeddings).

It reads an OUTPUT that ``benchmarks/few_label_acdc.py`` prepared (the held-out dataset, plans, folds, embedding
cache and memo) and writes only under ``OUTPUT/cpu_bf16_parity/``. Resumable: a finished training or prediction is
kept, and so is its time; an interrupted training starts again, since a resumed one would not be the seeded one.

    python benchmarks/cpu_bf16_parity.py --output runs/acdc_lite_medsam --method nnunet --fold 0 --steps 4000
    python benchmarks/cpu_bf16_parity.py --output runs/acdc_lite_medsam --method linear --fold 0 --steps 250

AutoSAM's head trains in fp32 on the CPU in either setting (AutoSAMHead.cpu_bf16), so an AutoSAM pair from the
cache is two fp32 trainings unless ``AUTOSAM_CPU_BF16_ENCODER=1``; its pairs in results/cpu_bf16_parity/seeded/
were trained before, with its head in bf16, and are why it is so.

The last line: ``parity: method=M fold=F steps=S seed=N fp32=X bf16=Y difference=Z`` (test mean Dice in %).
"""

import argparse
import json
import re
import shutil
import time
from pathlib import Path

from nnunet_autosam.cli import build_parser
from nnunet_autosam.comparison.provenance import LoggedWorkspace, code_version, machine, now
from nnunet_autosam.comparison.runs import Experiment
from nnunet_autosam.evaluation.metrics import DEFAULT_FILE_ENDING, evaluate_folder, list_cases, missing_predictions
from nnunet_autosam.model.heads import HEADS
from nnunet_autosam.training.trainer_base import SEED_ENV
from nnunet_autosam.utilities.atomic import write_json
from nnunet_autosam.utilities.precision import CPU_BF16_ENV

PRECISIONS = {"fp32": "0", "bf16": "1"}
PRECISION_LINE = re.compile(r"precision: (.*?) ?$", re.MULTILINE)


def run_precision(experiment: Experiment, prepared: dict, args, precision: str, folder: Path) -> dict:
    """Train and test-predict the fold at one precision under ``folder``; returns its figures."""
    method, dataset = args.method, experiment.workspace.dataset
    settings = {
        **experiment.schedule.environment(args.steps),
        "nnUNet_results": str(folder / "nnUNet_results"),
        CPU_BF16_ENV: PRECISIONS[precision],
        SEED_ENV: str(args.seed),
    }
    workspace = LoggedWorkspace(experiment.root, {**experiment.workspace.settings, **settings}, shown=settings)
    workspace.dataset = dataset
    workspace.log = folder.parent / "commands.log"  # not the experiment's, which its published commands.md lists
    trainer, plans = experiment.trainer(method), experiment.plans(method, prepared)
    fold_dir = folder / "nnUNet_results" / experiment.workspace.dataset_name / experiment.folder(method, prepared)
    fold_dir = fold_dir / f"fold_{args.fold}"
    timings_file = folder / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    if not (fold_dir / "checkpoint_final.pth").is_file():
        shutil.rmtree(fold_dir, ignore_errors=True)
        start = time.perf_counter()
        workspace.train(trainer, args.fold, plans, args.device)
        timings = {"train_s": round(time.perf_counter() - start, 1)}
        write_json(timings, timings_file)
    plan = experiment.plan_of(prepared)
    predictions = folder / "test_predictions"
    if missing_predictions(predictions, list_cases(plan.test_labels, DEFAULT_FILE_ENDING)):
        shutil.rmtree(predictions, ignore_errors=True)
        start = time.perf_counter()
        if method in HEADS:  # the test tiles in batches, once; a memo already holding them computes nothing
            workspace.prefill_memo(plan.test_images, plans, args.device)
        workspace.predict(plan.test_images, predictions, trainer, args.fold, plans, args.device)
        timings["predict_s"] = round(time.perf_counter() - start, 1)
        write_json(timings, timings_file)
    test = evaluate_folder(predictions, plan.test_labels, output_file=folder / "test_summary.json", num_processes=2)
    validation = json.loads((fold_dir / "validation" / "summary.json").read_text())
    log = max(fold_dir.glob("training_log_*.txt")).read_text(encoding="utf-8")
    return {
        "precision": precision,
        "trainer_precision": PRECISION_LINE.findall(log)[0],
        "test_dice": round(100 * test["foreground_mean"]["Dice"], 2),
        "test_dice_per_class": {str(k): round(100 * v["Dice"], 2) for k, v in test["mean"].items()},
        "val_dice": round(100 * validation["foreground_mean"]["Dice"], 2),
        **timings,
        "scored": now(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="the few-label experiment's OUTPUT, prepared")
    parser.add_argument("--method", default="nnunet", help="a method of the comparison (default: nnunet)")
    parser.add_argument("--fold", type=int, default=0, help="its fold (default 0: 1 labelled patient, seed 0)")
    parser.add_argument(
        "--steps", type=int, default=4000, help="training steps, 50 per epoch (default: 4000, nnU-Net's S at fold 0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="AUTOSAM_SEED of both trainings (default: 0)")
    parser.add_argument("--device", default="cpu", help="where both run (default: cpu; bf16 autocast is CPU's)")
    args = parser.parse_args(argv)
    output = args.output.resolve()
    compare = build_parser().parse_args(["compare", "27", "--output", str(output), "--methods", args.method])
    experiment = Experiment(compare)
    prepared = experiment.load_prepared()
    run = f"{args.method}_fold{args.fold}_{args.steps}steps_seed{args.seed}"
    root = output / "cpu_bf16_parity" / run
    figures = {
        precision: run_precision(experiment, prepared, args, precision, root / precision) for precision in PRECISIONS
    }
    difference = round(figures["bf16"]["test_dice"] - figures["fp32"]["test_dice"], 2)
    record = {"run": run, "method": args.method, "fold": args.fold, "steps": args.steps, "seed": args.seed}
    record.update(difference=difference, machine=machine(), code=code_version(), figures=figures)
    write_json(record, root / "parity.json")
    print("| precision | trainer's precision line | validation mean Dice | test mean Dice | train s | predict s |")
    print("|---|---|---|---|---|---|")
    for precision, row in figures.items():
        print(
            f"| {precision} | {row['trainer_precision']} | {row['val_dice']} | {row['test_dice']} "
            f"| {row.get('train_s', '-')} | {row.get('predict_s', '-')} |"
        )
    print(
        f"parity: method={args.method} fold={args.fold} steps={args.steps} seed={args.seed} "
        f"fp32={figures['fp32']['test_dice']} bf16={figures['bf16']['test_dice']} difference={difference}"
    )


if __name__ == "__main__":
    main()
