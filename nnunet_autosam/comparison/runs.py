"""`nnunet-autosam compare`: with 1, 5 or 20 labelled units, does a frozen foundation encoder with a light head
beat nnU-Net on this dataset? One command, from an nnU-Net raw dataset to the published table.

    nnunet-autosam compare 42 --output runs/d42 --holdout 20 --group-pattern '(patient\\d+)_'   # every run
    nnunet-autosam compare 42 --output runs/d42 --shard 0/4            # a quarter of the runs, resumable
    nnunet-autosam compare 42 --output runs/d42 --plan --shard 0/4     # each quarter's runs and hours
    nnunet-autosam compare 42 --output runs/d42 --publish results/d42  # score what has finished

Protocol, fixed before anything trains:
- test set: the dataset's own imagesTs/labelsTs, folders given with --test-images/--test-labels, or N units held
  out into a derived dataset (--holdout N; comparison/holdout.py). No split, plan or model choice looks at it;
- units: cases that belong together (frames of one patient) are one unit in the test set, the budgets and the
  validation set (data/grouping.py); budgets count units;
- folds: ``splits --labelled 1 5 --seeds 3`` over the remaining units, with a small shared validation set that
  nnU-Net's final validation uses (the final checkpoint is scored; nothing is selected on validation);
- methods: stock nnU-Net 2d, every registered head on one frozen encoder (``lite_medsam`` by default), AutoSAM
  with its encoder trained (ft all), zero-shot SAM with oracle boxes, and optionally the SimCLR baseline;
- schedule: every trained method the same iterations and batch size. ``cpu`` (default): 10 epochs x 20 iterations
  at batch 4, CNN and ft-all on seed 0 only. ``full``: nnU-Net's own 1000 x 250 iterations at its planned 2d
  batch size, every method on every seed (for a GPU);
- channels: every channel of a multi-channel dataset reaches nnU-Net and the SAM heads (``--channels stack`` or
  ``separate`` chooses how the encoder takes them, through ``plans --channels``); zero-shot prompts channel 0;
- the frozen-encoder heads train from the embedding cache; test predictions are nnUNetv2_predict without
  test-time mirroring, whose frozen-encoder passes are shared by every method and fold through
  ``AUTOSAM_EMBEDDING_MEMO`` (the same labels, tested); scores are ``nnunet-autosam report``.

Resumable: each run (train + predict one method on one fold) writes ``OUTPUT/runs/<run>.json`` when it has
finished, and is never redone; an interrupted run is wiped and restarted. Shardable: ``--shard i/n`` takes a
share of the runs balanced by their expected cost; shards may run at once on one output folder.
"""

import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm

from nnunet_autosam.comparison import publish
from nnunet_autosam.comparison.dataset import HOLDOUT, TEST_FOLDERS, Plan, plan_dataset
from nnunet_autosam.comparison.locks import exclusive
from nnunet_autosam.comparison.protocol import (
    DEFAULT_METHODS,
    METHODS,
    SCHEDULES,
    ZERO_SHOT,
    Run,
    all_runs,
    custom_schedule,
    shard,
    shares,
)
from nnunet_autosam.comparison.provenance import LoggedWorkspace, machine, now
from nnunet_autosam.data.grouping import add_grouping_arguments, grouping_from_args
from nnunet_autosam.model import encoders
from nnunet_autosam.model.channel_input import STRATEGIES
from nnunet_autosam.model.embedding_memo import MEMO_ENV
from nnunet_autosam.model.heads import HEADS
from nnunet_autosam.utilities.atomic import write_json, write_text
from nnunet_autosam.utilities.commands import STOCK_PLANS
from nnunet_autosam.utilities.devices import pick_device
from nnunet_autosam.utilities.precision import embedding_precision
from nnunet_autosam.utilities.shards import parse_shard


class Experiment:
    def __init__(self, args):
        self.args = args
        self.root = Path(args.output).resolve()
        self.schedule = custom_schedule(args.schedule, args.epochs, args.iters, args.batch_size)
        self.grouping = grouping_from_args(args)
        # Test tiles of every frozen-encoder method and fold share one encoder pass (embedding_memo.py).
        settings = {**self.schedule.environment(), MEMO_ENV: str(self.root / "embedding_memo")}
        self.workspace = LoggedWorkspace(self.root, settings)
        self.runs_dir = self.root / "runs"
        self.marker = self.root / "prepared.json"

    # ------------------------------------------------------------------------------------------ prepare

    def prepare(self) -> dict:
        """Test set, plans for both networks, folds: once per output folder (every shard waits for the first)."""
        with exclusive(self.root / "prepare.lock"):
            if self.marker.is_file():
                return self.load_prepared()
            start = time.perf_counter()
            plan = plan_dataset(self.args, self.root / "nnUNet_raw", self.grouping)
            self.workspace.dataset = plan.dataset_id
            if plan.test_kind == HOLDOUT:
                holdout = ["--count", str(self.args.holdout), *self.grouping.arguments(), "--overwrite"]
                self.workspace.plugin("holdout", str(plan.source), "-d", plan.dataset_id, *holdout)
            elif plan.folder.resolve() != plan.source:
                self.workspace.run("ln", "-sfn", str(plan.source), str(plan.folder))
            encoder_args = ["--encoder", self.args.encoder, "--embedding-cache", "cache", *self.input_size_args()]
            encoder_args += ["--channels", self.args.channels] if self.args.channels else []
            batch_args = ["--batch-size", str(self.schedule.batch_size)] if self.schedule.batch_size else []
            sam_plans = self.workspace.plan(encoder_args + batch_args)
            batch_size = self.schedule.batch_size or self.planned_batch_size()
            if not batch_args:  # the full schedule: nnU-Net's planned batch, known only now
                self.workspace.plugin("plans", plan.dataset_id, *encoder_args, "--batch-size", str(batch_size))
            self.workspace.plugin(
                "splits",
                plan.dataset_id,
                "--labelled",
                *map(str, self.args.budgets),
                "--seeds",
                str(self.args.seeds),
                "--val-patients",
                str(self.args.val_patients),
                *([] if plan.test_kind == HOLDOUT else self.grouping.arguments()),
                "--force",
            )
            prepared = {
                "plan": {key: str(value) for key, value in vars(plan).items()},
                "dataset": plan.dataset_id,
                "sam_plans": sam_plans,
                "stock_plans": self.stock_plans(batch_size),
                "batch_size": batch_size,
                "wall_s": round(time.perf_counter() - start, 1),
            }
            write_json(prepared, self.marker)
            return prepared

    def load_prepared(self) -> dict:
        prepared = json.loads(self.marker.read_text(encoding="utf-8"))
        self.workspace.dataset = prepared["dataset"]
        return prepared

    def plan_of(self, prepared: dict) -> Plan:
        fields = prepared["plan"]
        paths = {key: Path(value) for key, value in fields.items() if key != "test_kind"}
        return Plan(test_kind=fields["test_kind"], **paths)

    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed" / self.workspace.dataset_name

    def planned_batch_size(self) -> int:
        plans = json.loads((self.preprocessed() / f"{STOCK_PLANS}.json").read_text())
        return plans["configurations"]["2d"]["batch_size"]

    def stock_plans(self, batch_size: int) -> str:
        """nnU-Net's own plans, at the shared batch size: a plans variant, as nnU-Net's docs describe them."""
        if batch_size == self.planned_batch_size():
            return STOCK_PLANS
        plans = json.loads((self.preprocessed() / f"{STOCK_PLANS}.json").read_text())
        name = f"{STOCK_PLANS}_batch{batch_size}"
        plans["plans_name"] = name
        plans["configurations"]["2d"]["batch_size"] = batch_size
        write_json(plans, self.preprocessed() / f"{name}.json")
        return name

    # --------------------------------------------------------------------------------------------- runs

    def all_runs(self) -> list:
        folds = json.loads((self.preprocessed() / "few_label_splits.json").read_text())["folds"]
        return all_runs(self.args.methods, folds, self.schedule)

    def shard(self, runs: list) -> list:
        """This shard's runs (``--shard i/n``), in running order."""
        return shard(runs, self.schedule, self.args.shard)

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

    def prefill_test_tiles(self, plan: Plan, plans: str) -> None:
        """The test tiles into the embedding memo in batches, once (per precision) for every head and fold."""
        marker = (
            self.root / "embedding_memo" / f"prefilled_{plans}_{embedding_precision(pick_device(self.args.device))}"
        )
        if not marker.is_file():
            self.workspace.prefill_memo(plan.test_images, plans, self.args.device)
            write_text(now() + "\n", marker)

    def execute(self, run: Run, prepared: dict) -> None:
        """Train and predict one run from scratch (wiping an interrupted attempt), then mark it done."""
        plan = self.plan_of(prepared)
        start = time.perf_counter()
        record: dict = {"run": run.name, "method": run.method, "fold": run.fold, "started": now()}
        if run.fold is None:
            shutil.rmtree(self.zero_shot_dir(), ignore_errors=True)
            labels = ["--labels-dir", str(plan.test_labels)] if plan.test_kind == TEST_FOLDERS else []
            self.workspace.plugin(
                "zero-shot",
                "-d",
                prepared["dataset"],
                "-i",
                str(plan.test_images),
                "-o",
                str(self.zero_shot_dir()),
                "--encoder",
                self.args.encoder,
                "--device",
                self.args.device,
                *self.input_size_args(),
                *labels,
            )
            record["predict_s"] = round(time.perf_counter() - start, 1)
        else:
            folder = self.folder(run.method, prepared)
            plans = folder.split("__")[1]
            predictions = self.root / "test_predictions" / folder / f"fold_{run.fold}"
            shutil.rmtree(
                self.root / "nnUNet_results" / self.workspace.dataset_name / folder / f"fold_{run.fold}", True
            )
            shutil.rmtree(predictions, ignore_errors=True)
            options = ["-pretrained_weights", str(self.simclr_checkpoint())] if run.method == "simclr" else []
            self.workspace.train(self.trainer(run.method), run.fold, plans, self.args.device, *options)
            record["train_s"] = round(time.perf_counter() - start, 1)
            if run.method in HEADS:
                self.prefill_test_tiles(plan, plans)
            self.workspace.predict(
                plan.test_images, predictions, self.trainer(run.method), run.fold, plans, self.args.device
            )
            record["predict_s"] = round(time.perf_counter() - start - record["train_s"], 1)
        record.update(
            wall_s=round(time.perf_counter() - start, 1), finished=now(), machine=machine(), device=self.args.device
        )
        write_json(record, self.runs_dir / f"{run.name}.json")

    def input_size_args(self) -> list:
        return ["--input-size", str(self.args.input_size)] if self.args.input_size else []

    def simclr_checkpoint(self) -> Path:
        """SimCLR pretraining on every training image, once for all folds (its own run marker, counted as simclr's)."""
        marker = self.runs_dir / "simclr_pretraining.json"
        with exclusive(self.root / "simclr.lock"):
            if not marker.is_file():
                start = time.perf_counter()
                self.workspace.pretrain_simclr(self.args.device)
                record: dict = {"run": "simclr_pretraining", "method": "simclr", "fold": None}
                record.update(
                    wall_s=round(time.perf_counter() - start, 1),
                    finished=now(),
                    machine=machine(),
                    device=self.args.device,
                )
                write_json(record, marker)
        return self.workspace.simclr_checkpoint

    def plan(self) -> None:
        """Print every shard's runs and expected hours on this project's 2-core CPU; train nothing."""
        self.prepare()
        every_share = shares(self.all_runs(), self.schedule, parse_shard(self.args.shard)[1])
        for index, share in enumerate(every_share):
            hours = sum(run.cost(self.schedule) for run in share) / 3600
            done = sum((self.runs_dir / f"{run.name}.json").is_file() for run in share)
            print(
                f"shard {index}/{len(every_share)}: about {hours:.1f} h on a 2-core CPU, "
                f"{done} of {len(share)} runs done: " + " ".join(run.name for run in share)
            )

    def run_shard(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "invocations.log", "a", encoding="utf-8") as log:
            log.write(f"{now()} {machine()}: {invocation()}\n")
        prepared = self.prepare()
        runs = self.shard(self.all_runs())
        todo = [run for run in runs if not (self.runs_dir / f"{run.name}.json").is_file()]
        print(
            f"shard {self.args.shard}: {len(runs)} runs, {len(runs) - len(todo)} done before, {len(todo)} to run",
            flush=True,
        )
        for run in tqdm(todo, desc=f"few-label comparison, shard {self.args.shard}", unit="run"):
            tqdm.write(f"{now()} {run.name}")
            self.execute(run, prepared)


def invocation() -> str:
    """This process's command line, as the user typed it."""
    program = Path(sys.argv[0]).name
    if program in ("nnunet-autosam", "cli.py", "__main__.py"):
        return shlex.join(["nnunet-autosam", *sys.argv[1:]])
    return shlex.join(["python", *sys.argv])


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="the few-label comparison on any nnU-Net dataset: nnU-Net against the SAM heads, one command",
        description=(__doc__ or "").split("\n\n")[0].replace("\n", " "),
    )
    parser.add_argument("dataset", metavar="DATASET", help="dataset id, DatasetXXX_NAME (in $nnUNet_raw) or a folder")
    parser.add_argument("--output", type=Path, required=True, help="working folder (nnU-Net folders, runs, report)")
    parser.add_argument("--holdout", type=int, metavar="N", help="hold out N labelled units as the test set")
    parser.add_argument("--derived-id", type=int, help="id of the dataset --holdout derives (default: the id + 500)")
    parser.add_argument("--test-images", type=Path, metavar="DIR", help="test images (CASE_0000.nii.gz)")
    parser.add_argument("--test-labels", type=Path, metavar="DIR", help="their labels (CASE.nii.gz)")
    add_grouping_arguments(parser)
    parser.add_argument("--val-patients", type=int, default=2, help="units of the shared validation set (default: 2)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 5], help="labelled units (default: 1 5)")
    parser.add_argument("--seeds", type=int, default=3, help="folds per budget (default: 3)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=[*METHODS, ZERO_SHOT])
    parser.add_argument("--encoder", default="lite_medsam", choices=encoders.encoder_types())
    parser.add_argument("--input-size", type=int, help="encoder input size (default: the encoder's preset)")
    parser.add_argument(
        "--channels",
        choices=STRATEGIES,
        help="how the SAM methods take several channels, passed to plans --channels: stack (up to 3 as the "
        "encoder's R, G, B) or separate (each through the encoder, fused) (default: plans' default for the "
        "channel count)",
    )
    parser.add_argument("--schedule", choices=SCHEDULES, default="cpu")
    parser.add_argument("--epochs", type=int, help="override the schedule's epochs (e.g. for a smoke test)")
    parser.add_argument("--iters", type=int, help="override the schedule's iterations per epoch")
    parser.add_argument("--batch-size", type=int, help="override the schedule's batch size")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--shard", default="0/1", help="i/n: this shard's share of the runs (default 0/1: all)")
    parser.add_argument(
        "--claim-min-dice",
        type=float,
        help="also check that AutoSAM's mean Dice at the smallest budget reaches this (in %%)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print how --shard i/n would split the runs and each shard's expected hours on a 2-core CPU",
    )
    parser.add_argument("--publish", type=Path, metavar="DIR", help="score the finished runs, write the table to DIR")
    parser.set_defaults(func=run)


def run(args) -> None:
    experiment = Experiment(args)
    if args.publish:
        publish.publish(experiment, args.publish.resolve())
    elif args.plan:
        experiment.plan()
    else:
        experiment.run_shard()
