"""The paper's experiment on ACDC: stock nnU-Net against the SAM heads with 1 and 5 labelled patients, scored
on a test set that nothing was tuned on, from an ACDC folder to the published table.

    python benchmarks/few_label_acdc.py --output runs/acdc_lite_medsam               # every run, resumable
    python benchmarks/few_label_acdc.py --output runs/acdc_lite_medsam --shard 0/4   # a quarter of the runs
    python benchmarks/few_label_acdc.py --output runs/acdc_lite_medsam --plan --shard 0/4   # each quarter's hours
    python benchmarks/few_label_acdc.py --output runs/acdc_lite_medsam --publish results/acdc_lite_medsam
    python benchmarks/few_label_acdc.py --output runs/acdc_gpu --device cuda --schedule full

Protocol, fixed before anything trains:
- test set: ``convert-acdc --holdout 20`` (20 training patients, stratified by pathology group, fixed seed),
  or an official ACDC ``testing/`` folder (``--test-from DIR``). No split, schedule or model choice looks at it;
- folds: ``splits --labelled 1 5 --seeds 3`` over the remaining patients, with a small shared validation set
  that nnU-Net's final validation uses (the final checkpoint is scored; nothing is selected on validation);
- methods: stock nnU-Net 2d, AutoSAM, SAM encoder + linear, SAM encoder + CNN, AutoSAM (ft all), all on one
  encoder (``lite_medsam`` by default), zero-shot SAM with oracle boxes, and optionally the SimCLR baseline;
- schedule: every trained method gets the same iterations and batch size. ``cpu`` (default): 10 epochs x 20
  iterations at batch 4, sized so that the dearest run (training the encoder, about 14 s per step on 2 cores)
  fits in 2 hours; CNN and ft-all train on seed 0 only. ``full``: nnU-Net's own 1000 x 250 iterations at
  nnU-Net's planned 2d batch size, every method on every seed (for a GPU);
- the frozen-encoder heads train from the embedding cache (each slice's encoder pass paid once); test
  predictions are nnUNetv2_predict without test-time mirroring, whose frozen-encoder passes are shared by
  every method and fold through ``AUTOSAM_EMBEDDING_MEMO`` (the same labels, tested); scores are
  ``nnunet-autosam report``.

Resumable: each run (train + predict one method on one fold) writes ``OUTPUT/runs/<run>.json`` when it has
finished, and is never redone; an interrupted run is wiped and restarted. Shardable: ``--shard i/n`` takes a
share of the runs balanced by their expected cost (``--plan`` prints each share and its expected hours on a
2-core CPU: with the defaults, 4 shards of about 1.5 hours); shards may run at once on one output folder. ``--publish
DIR`` scores whatever has finished and writes table.md, table.csv, plot.png, commands.md and timings.json.
"""

import argparse
import csv
import fcntl
import json
import os
import platform
import shlex
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from nnunet_autosam.data.conversion import default_acdc_folder
from nnunet_autosam.model.embedding_memo import MEMO_ENV
from nnunet_autosam.model.heads import HEADS
from nnunet_autosam.utilities.atomic import atomic_path, write_json, write_text
from nnunet_autosam.utilities.commands import DATASET_ID, FULL_FT_TRAINER, STOCK_PLANS, Workspace
from nnunet_autosam.utilities.shards import parse_shard

DATASET = "Dataset027_ACDC"


@dataclass(frozen=True)
class Method:
    trainer: str
    sam_plans: bool  # the encoder's plans; otherwise nnU-Net's own network
    # Expected cost on this project's 2-core CPU, for shard balancing and --plan: seconds per training step at
    # batch 4, and seconds per run besides the steps (start, final validation, predicting 20 test patients).
    cpu_step_s: float
    cpu_run_s: float


# As measured by the cpu schedule's runs in results/acdc_lite_medsam (mostly idle machine; ft-all from
# its fold-3 run, which had the CPU to itself).
METHODS = {
    "nnunet": Method("nnUNetTrainerEnvSchedule", False, 1.7, 230),
    "autosam": Method(HEADS["autosam"].trainer, True, 0.65, 75),
    "linear": Method(HEADS["linear"].trainer, True, 0.45, 50),
    "cnn": Method(HEADS["cnn"].trainer, True, 10.5, 1200),
    "ftall": Method(FULL_FT_TRAINER, True, 14.0, 1700),
    "simclr": Method("nnUNetTrainerSimCLRFinetune", False, 1.7, 230),
}
DEFAULT_METHODS = ("nnunet", "autosam", "linear", "cnn", "ftall", "zero_shot")
ZERO_SHOT = "zero_shot"
ZERO_SHOT_COST_S = 500.0  # about one encoder pass per test slice
LONG_RUN_S = 1800.0
# The bar this experiment sets for AutoSAM at the smallest budget, as mean foreground Dice in %
# averaged over the seeds; the paper's ViT-B AutoSAM has 39.3 with one labelled volume.
CLAIM_MIN_DICE = 39.0


@dataclass(frozen=True)
class Schedule:
    epochs: int  # None: nnU-Net's own
    iterations: int
    batch_size: int  # None: nnU-Net's planned 2d batch size
    one_seed_methods: tuple  # methods trained on seed 0 only

    def environment(self) -> dict:
        if self.epochs is None:
            return {}
        return {
            "AUTOSAM_NUM_EPOCHS": str(self.epochs),
            "AUTOSAM_ITERS_PER_EPOCH": str(self.iterations),
            "AUTOSAM_VAL_ITERS_PER_EPOCH": "1",
        }


SCHEDULES = {
    "cpu": Schedule(10, 20, 4, ("cnn", "ftall")),
    "full": Schedule(None, None, None, ()),
}


@dataclass(frozen=True)
class Run:
    """One method on one fold (train, then predict the test set), or the zero-shot baseline (fold None)."""

    method: str
    fold: int = None

    @property
    def name(self) -> str:
        return self.method if self.fold is None else f"{self.method}_fold{self.fold}"

    def cost(self, schedule: Schedule) -> float:
        if self.fold is None:
            return ZERO_SHOT_COST_S
        method = METHODS[self.method]
        return method.cpu_step_s * (schedule.epochs or 1000) * (schedule.iterations or 250) + method.cpu_run_s


@contextmanager
def exclusive(lock_file: Path):
    """Hold an exclusive lock, so that shards started at once prepare the dataset only once."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def machine() -> str:
    """The machine in words: CPU model and cores, memory, and the GPU when one is used."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    text = f"{cpu}, {os.cpu_count()} cores, {memory_gb:.0f} GB"
    import torch

    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


class LoggedWorkspace(Workspace):
    """The demo's workspace, appending every command it runs to commands.log: the exact commands, published."""

    def __init__(self, root: Path, settings: dict):
        super().__init__(root, settings)
        self.log = root / "commands.log"
        self.settings = settings

    def run(self, *command: str) -> str:
        shown = (
            ("nnunet-autosam", *command[3:]) if command[:3] == (sys.executable, "-m", "nnunet_autosam.cli") else command
        )
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(shlex.join(shown) + "\n")
        return super().run(*command)


class Experiment:
    def __init__(self, args):
        self.args = args
        self.root = args.output.resolve()
        self.schedule = SCHEDULES[args.schedule]
        if args.epochs or args.iters or args.batch_size:  # a custom schedule, e.g. a smoke test
            base = self.schedule
            self.schedule = Schedule(
                args.epochs or base.epochs or 1000,
                args.iters or base.iterations or 250,
                args.batch_size or base.batch_size,
                base.one_seed_methods,
            )
        # Test tiles of every frozen-encoder method and fold share one encoder pass (embedding_memo.py).
        settings = {**self.schedule.environment(), MEMO_ENV: str(self.root / "embedding_memo")}
        self.workspace = LoggedWorkspace(self.root, settings)
        self.runs_dir = self.root / "runs"
        self.test_images = self.root / "nnUNet_raw" / DATASET / "imagesTs"

    # ------------------------------------------------------------------------------------------ prepare

    def source(self) -> Path:
        """The ACDC folder to convert: as given, or its training/ beside the official testing/ of --test-from."""
        if self.args.test_from is None:
            return self.args.acdc.resolve()
        source = self.root / "acdc_source"
        source.mkdir(parents=True, exist_ok=True)
        for subset, target in (("training", self.args.acdc / "training"), ("testing", self.args.test_from)):
            link = source / subset
            if not link.exists():
                link.symlink_to(target.resolve(), target_is_directory=True)
        return source

    def prepare(self) -> dict:
        """Convert, plan and preprocess, plans for both networks, folds: once per output folder."""
        marker = self.root / "prepared.json"
        with exclusive(self.root / "prepare.lock"):
            if marker.is_file():
                return json.loads(marker.read_text())
            start = time.perf_counter()
            convert = ["--overwrite"] + ([] if self.args.test_from else ["--holdout", str(self.args.holdout)])
            encoder_args = ["--encoder", self.args.encoder, "--embedding-cache", "cache", *self.input_size_args()]
            batch_args = ["--batch-size", str(self.schedule.batch_size)] if self.schedule.batch_size else []
            sam_plans = self.workspace.prepare(self.source(), convert, encoder_args + batch_args)
            batch_size = self.schedule.batch_size or self.planned_batch_size()
            if not batch_args:  # the full schedule: nnU-Net's planned batch, known only now
                self.workspace.plugin("plans", DATASET_ID, *encoder_args, "--batch-size", str(batch_size))
            stock_plans = self.stock_plans(batch_size)
            self.workspace.plugin(
                "splits",
                DATASET_ID,
                "--labelled",
                *map(str, self.args.budgets),
                "--seeds",
                str(self.args.seeds),
                "--val-patients",
                str(self.args.val_patients),
                "--force",
            )
            prepared = {
                "sam_plans": sam_plans,
                "stock_plans": stock_plans,
                "batch_size": batch_size,
                "wall_s": round(time.perf_counter() - start, 1),
            }
            write_json(prepared, marker)
            return prepared

    def planned_batch_size(self) -> int:
        plans = json.loads((self.root / "nnUNet_preprocessed" / DATASET / f"{STOCK_PLANS}.json").read_text())
        return plans["configurations"]["2d"]["batch_size"]

    def stock_plans(self, batch_size: int) -> str:
        """nnU-Net's own plans, at the shared batch size: a plans variant, as nnU-Net's docs describe them."""
        if batch_size == self.planned_batch_size():
            return STOCK_PLANS
        folder = self.root / "nnUNet_preprocessed" / DATASET
        plans = json.loads((folder / f"{STOCK_PLANS}.json").read_text())
        name = f"{STOCK_PLANS}_batch{batch_size}"
        plans["plans_name"] = name
        plans["configurations"]["2d"]["batch_size"] = batch_size
        write_json(plans, folder / f"{name}.json")
        return name

    # --------------------------------------------------------------------------------------------- runs

    def all_runs(self) -> list:
        folds = json.loads((self.root / "nnUNet_preprocessed" / DATASET / "few_label_splits.json").read_text())
        runs = []
        for method in self.args.methods:
            if method == ZERO_SHOT:
                runs.append(Run(ZERO_SHOT))
                continue
            for fold in folds["folds"]:
                if fold["seed"] == 0 or method not in self.schedule.one_seed_methods:
                    runs.append(Run(method, fold["fold"]))
        return runs

    def shares(self, runs: list) -> list:
        """Every shard's runs in running order, assigned longest first to the least loaded shard.

        Within a shard the runs under half an hour go first, fold by fold, so that the cheap comparison
        (nnU-Net, AutoSAM, linear, zero-shot) of whole folds lands before the hours-long runs start; these then
        go cheapest first, so that a shard stopped early leaves the most runs finished.
        """
        _, count = parse_shard(self.args.shard)
        loads, assigned = [0.0] * count, [[] for _ in range(count)]
        for run in sorted(runs, key=lambda r: (-r.cost(self.schedule), r.name)):
            target = loads.index(min(loads))
            loads[target] += run.cost(self.schedule)
            assigned[target].append(run)

        def order(run: Run) -> tuple:
            cost = run.cost(self.schedule)
            if cost > LONG_RUN_S:
                return 1, cost, run.name
            return 0, -1 if run.fold is None else run.fold, cost

        return [sorted(share, key=order) for share in assigned]

    def shard(self, runs: list) -> list:
        """This shard's runs (``--shard i/n``), in running order."""
        return self.shares(runs)[parse_shard(self.args.shard)[0]]

    def trainer(self, method: str) -> str:
        if method == "nnunet" and self.schedule.epochs is None:
            return "nnUNetTrainer"  # the full schedule is stock nnU-Net itself
        return METHODS[method].trainer

    def folder(self, method: str, prepared: dict) -> str:
        """nnU-Net's results folder name of a method: Trainer__plans__2d."""
        plans = prepared["sam_plans"] if METHODS[method].sam_plans else prepared["stock_plans"]
        return f"{self.trainer(method)}__{plans}__2d"

    def zero_shot_dir(self) -> Path:
        return self.root / "zero_shot" / f"zero_shot_{self.args.encoder}"

    def execute(self, run: Run, prepared: dict) -> None:
        """Train and predict one run from scratch (wiping an interrupted attempt), then mark it done."""
        marker = self.runs_dir / f"{run.name}.json"
        start = time.perf_counter()
        record = {"run": run.name, "method": run.method, "fold": run.fold, "started": now()}
        if run.fold is None:
            shutil.rmtree(self.zero_shot_dir(), ignore_errors=True)
            self.workspace.plugin(
                "zero-shot",
                "-d",
                DATASET_ID,
                "-i",
                str(self.test_images),
                "-o",
                str(self.zero_shot_dir()),
                "--encoder",
                self.args.encoder,
                "--device",
                self.args.device,
                *self.input_size_args(),
            )
            record["predict_s"] = round(time.perf_counter() - start, 1)
        else:
            folder = self.folder(run.method, prepared)
            plans = folder.split("__")[1]
            predictions = self.root / "test_predictions" / folder / f"fold_{run.fold}"
            shutil.rmtree(self.root / "nnUNet_results" / DATASET / folder / f"fold_{run.fold}", ignore_errors=True)
            shutil.rmtree(predictions, ignore_errors=True)
            options = ["-pretrained_weights", str(self.simclr_checkpoint())] if run.method == "simclr" else []
            self.workspace.train(self.trainer(run.method), run.fold, plans, self.args.device, *options)
            record["train_s"] = round(time.perf_counter() - start, 1)
            self.workspace.predict(
                self.test_images, predictions, self.trainer(run.method), run.fold, plans, self.args.device
            )
            record["predict_s"] = round(time.perf_counter() - start - record["train_s"], 1)
        record.update(
            wall_s=round(time.perf_counter() - start, 1), finished=now(), machine=machine(), device=self.args.device
        )
        write_json(record, marker)

    def input_size_args(self) -> list:
        return ["--input-size", str(self.args.input_size)] if self.args.input_size else []

    def simclr_checkpoint(self) -> Path:
        """SimCLR pretraining on every training image, once for all folds (its own run marker, counted as simclr's)."""
        marker = self.runs_dir / "simclr_pretraining.json"
        with exclusive(self.root / "simclr.lock"):
            if not marker.is_file():
                start = time.perf_counter()
                self.workspace.pretrain_simclr(self.args.device)
                write_json(
                    {
                        "run": "simclr_pretraining",
                        "method": "simclr",
                        "fold": None,
                        "wall_s": round(time.perf_counter() - start, 1),
                        "finished": now(),
                        "machine": machine(),
                        "device": self.args.device,
                    },
                    marker,
                )
        return self.workspace.simclr_checkpoint

    def plan(self) -> None:
        """Print every shard's runs and expected hours on this project's 2-core CPU; train nothing."""
        self.prepare()
        shares = self.shares(self.all_runs())
        for index, share in enumerate(shares):
            hours = sum(run.cost(self.schedule) for run in share) / 3600
            done = sum((self.runs_dir / f"{run.name}.json").is_file() for run in share)
            print(
                f"shard {index}/{len(shares)}: about {hours:.1f} h on a 2-core CPU, "
                f"{done} of {len(share)} runs done: " + " ".join(run.name for run in share)
            )

    def run_shard(self) -> None:
        with open(self.root / "invocations.log", "a", encoding="utf-8") as log:
            log.write(f"{now()} {machine()}: {shlex.join(['python', *sys.argv])}\n")
        prepared = self.prepare()
        runs = self.shard(self.all_runs())
        todo = [run for run in runs if not (self.runs_dir / f"{run.name}.json").is_file()]
        print(
            f"shard {self.args.shard}: {len(runs)} runs, {len(runs) - len(todo)} done before, {len(todo)} to run",
            flush=True,
        )
        for run in tqdm(todo, desc=f"few-label ACDC shard {self.args.shard}", unit="run"):
            tqdm.write(f"{now()} {run.name}")
            self.execute(run, prepared)

    # ------------------------------------------------------------------------------------------ publish

    def publish(self, target: Path) -> None:
        """Score what has finished and write the table, the plot, the commands and the timings to ``target``."""
        prepared = json.loads((self.root / "prepared.json").read_text())
        report_dir = self.root / "report"
        zero_shot = (
            ["--zero-shot", str(self.zero_shot_dir())] if (self.runs_dir / f"{ZERO_SHOT}.json").is_file() else []
        )
        self.workspace.plugin(
            "report",
            "-d",
            DATASET_ID,
            "--test-pred-root",
            str(self.root / "test_predictions"),
            *zero_shot,
            "-o",
            str(report_dir),
            "-np",
            "2",
        )
        records = sorted(
            (json.loads(path.read_text()) for path in self.runs_dir.glob("*.json")), key=lambda record: record["run"]
        )
        target.mkdir(parents=True, exist_ok=True)
        table = (
            self.header(prepared, records)
            + self.claims(report_dir / "report.csv")
            + (report_dir / "report.md").read_text(encoding="utf-8")
        )
        write_text(table.replace(str(self.root), "OUTPUT"), target / "table.md")
        for source, name in (("report.csv", "table.csv"), ("report.png", "plot.png")):
            with atomic_path(target / name) as tmp:
                shutil.copyfile(report_dir / source, tmp)
        write_text(self.commands(), target / "commands.md")
        write_json({"prepare_s": prepared["wall_s"], "runs": records}, target / "timings.json")
        print(f"published {target}: table.md, table.csv, plot.png, commands.md, timings.json")

    def header(self, prepared: dict, records: list) -> str:
        schedule = self.schedule
        steps = (
            f"{schedule.epochs} x {schedule.iterations} iterations"
            if schedule.epochs
            else "nnU-Net's 1000 x 250 iterations"
        )
        info = json.loads((self.root / "nnUNet_raw" / DATASET / "acdc_info.json").read_text())
        test_patients = sorted(p for p, entry in info.items() if entry["subset"] != "training")
        by_method = {}
        for record in records:
            by_method[record["method"]] = by_method.get(record["method"], 0) + record["wall_s"]
        machines = sorted({f"{record['machine']} ({record['device']})" for record in records if "machine" in record})
        total = prepared["wall_s"] + sum(by_method.values())
        lines = [
            f"# Few-label ACDC on `{self.args.encoder}`: test set of {len(test_patients)} patients",
            "",
            f"- Schedule: every trained method {steps} at batch {prepared['batch_size']}"
            + (f"; {', '.join(schedule.one_seed_methods)} on seed 0 only" if schedule.one_seed_methods else "")
            + ". Frozen-encoder heads train from the embedding cache (no augmentation); nnU-Net and ft-all augment "
            "as nnU-Net does. Prediction: nnUNetv2_predict, no test-time mirroring.",
            f"- Test patients ({'official testing/' if self.args.test_from else 'held out with convert-acdc --holdout'}"
            f", never used for any choice): {' '.join(test_patients)}",
            f"- Machine: {'; '.join(machines) or machine()}",
            f"- Wall time: preparation {prepared['wall_s'] / 60:.1f} min; "
            + ", ".join(f"{method} {seconds / 60:.1f} min" for method, seconds in sorted(by_method.items()))
            + f"; total {total / 3600:.2f} h",
            "- Commands: commands.md; per-run times: timings.json",
            "",
            "",
        ]
        return "\n".join(lines)

    def claims(self, report_csv: Path) -> str:
        """The two claims set for AutoSAM at the smallest budget, checked against the scored table, so that the
        table itself says when one fails."""
        budget = min(self.args.budgets)
        with open(report_csv, newline="", encoding="utf-8") as f:
            rows = {row["folder"].split("__")[0]: row for row in csv.DictReader(f) if row["budget"] == str(budget)}
        autosam, nnunet = (rows.get(METHODS[method].trainer) for method in ("autosam", "nnunet"))
        scored = [row for row in (autosam, nnunet) if row and int(row["n_seeds"])]
        title = f"## Claims at {budget} labelled patient{'s' if budget > 1 else ''}, as measured"
        if len(scored) < 2:
            return f"{title}\n\nNot measured: AutoSAM and stock nnU-Net need a scored fold each.\n\n"
        dice, reference = float(autosam["mean_Dice_mean"]), float(nnunet["mean_Dice_mean"])
        seeds = f"{autosam['n_seeds']} of {self.args.seeds} seeds"
        return "\n".join(
            [
                title,
                "",
                f"- AutoSAM's mean Dice, averaged over the seeds, is at least {CLAIM_MIN_DICE:g}: "
                f"{'holds' if dice >= CLAIM_MIN_DICE else '**fails**'} ({dice:.1f} over {seeds})",
                f"- AutoSAM beats stock nnU-Net at the same budget and schedule: "
                f"{'holds' if dice > reference else '**fails**'} ({dice:.1f} against {reference:.1f})",
                "",
                "",
            ]
        )

    def commands(self) -> str:
        invocations = (self.root / "invocations.log").read_text(encoding="utf-8")
        stock = (self.root / "commands.log").read_text(encoding="utf-8")
        settings = "".join(f"export {key}={value}\n" for key, value in self.workspace.settings.items())
        return (
            "# Commands\n\nThe runner, as invoked (time, machine, command):\n\n```\n"
            + invocations
            + "```\n\nWhat it ran, in order (OUTPUT is its --output folder; nnUNet_raw, nnUNet_preprocessed and "
            "nnUNet_results lie under it, and nnUNet_extTrainer is `nnunet-autosam trainer-dir`):\n\n```\n"
            + settings
            + stock
            + "```\n"
        ).replace(str(self.root), "OUTPUT")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--acdc",
        type=Path,
        default=default_acdc_folder(),
        help="ACDC folder holding training/ (default: $NNUNET_AUTOSAM_ACDC or ../shared/data/acdc)",
    )
    parser.add_argument("--output", type=Path, required=True, help="working folder (nnU-Net folders, runs, report)")
    parser.add_argument(
        "--test-from",
        type=Path,
        help="an official ACDC testing/ folder as the test set (default: hold out --holdout training patients)",
    )
    parser.add_argument("--holdout", type=int, default=20, help="held-out test patients (default: 20)")
    parser.add_argument(
        "--val-patients",
        type=int,
        default=2,
        help="patients of the shared validation set (default: 2; only nnU-Net's final validation uses them)",
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 5], help="labelled patients (default: 1 5)")
    parser.add_argument("--seeds", type=int, default=3, help="folds per budget (default: 3)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=[*METHODS, ZERO_SHOT])
    parser.add_argument("--encoder", default="lite_medsam")
    parser.add_argument("--input-size", type=int, help="encoder input size (default: the encoder's preset)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="cpu")
    parser.add_argument("--epochs", type=int, help="override the schedule's epochs (e.g. for a smoke test)")
    parser.add_argument("--iters", type=int, help="override the schedule's iterations per epoch")
    parser.add_argument("--batch-size", type=int, help="override the schedule's batch size")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--shard", default="0/1", help="i/n: this shard's share of the runs (default 0/1: all)")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print how --shard i/n would split the runs (n from --shard) and each shard's expected "
        "hours on a 2-core CPU (trains nothing)",
    )
    parser.add_argument(
        "--publish",
        type=Path,
        metavar="DIR",
        help="score the finished runs and write the table to DIR (trains nothing)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    experiment = Experiment(args)
    if args.publish:
        experiment.publish(args.publish.resolve())
    elif args.plan:
        experiment.plan()
    else:
        experiment.run_shard()


if __name__ == "__main__":
    main()
