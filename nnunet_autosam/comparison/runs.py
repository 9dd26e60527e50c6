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
- folds: ``splits --labelled 1 5 --seeds 3`` over the remaining units, with a shared validation set that
  nnU-Net's final validation uses (the final checkpoint is scored);
- methods: stock nnU-Net 2d, every registered head on one frozen encoder (``lite_medsam`` by default), AutoSAM
  with its encoder trained (ft all), zero-shot SAM with oracle boxes, and optionally the SimCLR baseline;
- schedule: every trained method at one batch size, for the steps its own validation chose (comparison/ladder.py):
  seed 0 trains at 250, 500, ... steps until doubling them adds less than ``--plateau`` points of validation mean
  Dice, and every seed trains at that S. ``cpu`` (default): rungs 250 to 16000 at batch 4, ft-all on seed 0 only.
  ``full``: nnU-Net's own 1000 x 250 iterations at its planned 2d batch size, every method on every seed (a GPU);
- channels: every channel of a multi-channel dataset reaches nnU-Net and the SAM heads (``--channels stack`` or
  ``separate`` chooses how the encoder takes them, through ``plans --channels``); zero-shot prompts channel 0;
- the frozen-encoder heads train from the embedding cache, by default on 8 views per slice augmented as nnU-Net
  augments (``--embedding-cache``); test predictions are nnUNetv2_predict without test-time mirroring, whose
  frozen-encoder passes are shared by every method and fold through ``AUTOSAM_EMBEDDING_MEMO`` (the same labels,
  tested); scores are ``nnunet-autosam report``.

Resumable: each training writes ``OUTPUT/runs/training/<method>_fold<k>_<steps>steps.json`` with its validation Dice
and curve, and each test prediction ``OUTPUT/runs/<method>_fold<k>.json`` beside its predicted labels in
``OUTPUT/runs/test_predictions``, when finished; neither is ever redone. ``runs/`` is all that publishing reads and
small (no checkpoint), so copied to a new machine it carries every finished fold; only a fold still to predict whose
checkpoint stayed behind is trained again. An interrupted training resumes with nnUNetv2_train --c from its last
checkpoint (or starts again if it left none), an interrupted prediction starts again. Shardable: ``--shard i/n``
takes a share of the lines (one method at one budget: its climb, then its seeds) balanced by their cost at most;
shards may run at once on one output folder.
"""

import json
import os
import re
import shlex
import shutil
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from nnunet_autosam.comparison import publish
from nnunet_autosam.comparison.dataset import HOLDOUT, TEST_FOLDERS, Plan, plan_dataset
from nnunet_autosam.comparison.holdout import short_name
from nnunet_autosam.comparison.ladder import Ladder, parse_method_steps
from nnunet_autosam.comparison.protocol import (
    DEFAULT_METHODS,
    DEFAULT_PSEUDO_VARIANTS,
    METHODS,
    PSEUDO,
    SCHEDULES,
    STUDENT_DATASET_S,
    ZERO_SHOT,
    ZERO_SHOT_COST_S,
    Line,
    PseudoVariant,
    all_lines,
    custom_schedule,
    run_key,
    shard,
    shares,
)
from nnunet_autosam.comparison.provenance import LoggedWorkspace, machine, now
from nnunet_autosam.data.grouping import add_grouping_arguments, grouping_from_args
from nnunet_autosam.evaluation.metrics import DEFAULT_FILE_ENDING, list_cases, missing_predictions
from nnunet_autosam.evaluation.report import TRAINED_MARKER
from nnunet_autosam.model import encoders
from nnunet_autosam.model.channel_input import STRATEGIES
from nnunet_autosam.model.embedding_memo import MEMO_ENV
from nnunet_autosam.model.heads import HEADS
from nnunet_autosam.utilities.atomic import write_json, write_text
from nnunet_autosam.utilities.commands import STOCK_PLANS
from nnunet_autosam.utilities.devices import pick_device
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.locks import exclusive
from nnunet_autosam.utilities.precision import embedding_precision
from nnunet_autosam.utilities.shards import parse_shard

LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+): ")  # nnU-Net's print_to_log_file


def resumable(fold_dir: Path) -> bool:
    """Whether nnUNetv2_train --c can go on from where an interrupted training of ``fold_dir`` stopped."""
    return any((fold_dir / name).is_file() for name in ("checkpoint_latest.pth", "checkpoint_final.pth"))


def earlier_attempts_s(fold_dir: Path) -> float:
    """Seconds the interrupted attempts in ``fold_dir`` ran: each from its log's first line to its last write.

    nnU-Net starts a new training_log_*.txt at each start and stamps every line, so this counts the CPU time
    they cost, the part lost after their last checkpoint included.
    """
    total = 0.0
    for log in fold_dir.glob("training_log_*.txt"):
        with open(log, encoding="utf-8") as lines:
            stamps = (LOG_STAMP.match(line) for line in lines)
            first = next((stamp.group(1) for stamp in stamps if stamp), None)
        if first is not None:
            total += max(0.0, log.stat().st_mtime - datetime.strptime(first, "%Y-%m-%d %H:%M:%S.%f").timestamp())
    return total


class Experiment:
    def __init__(self, args):
        self.args = args
        self.variants = [PseudoVariant.parse(text) for text in args.pseudo_variants]
        if PSEUDO in args.methods:
            for teacher in sorted({teacher for variant in self.variants for teacher in variant.teachers}):
                if teacher not in args.methods:
                    raise InputError(
                        f"the pseudo-label teacher {teacher} is not among --methods: add it, so that the table shows "
                        f"the teacher beside its student"
                    )
        self.root = Path(args.output).resolve()
        self.schedule = custom_schedule(args.schedule, args.ladder, args.iters, args.batch_size, args.one_seed)
        caps, starts = parse_method_steps(args.cap, "cap"), parse_method_steps(args.start, "start")
        self.ladder = Ladder(self.schedule.rungs, args.plateau, caps, starts)
        self.grouping = grouping_from_args(args)
        # Test tiles of every frozen-encoder method and fold share one encoder pass (embedding_memo.py).
        self.workspace = LoggedWorkspace(self.root, {MEMO_ENV: str(self.root / "embedding_memo")})
        self.runs_dir = self.root / "runs"
        self.marker = self.root / "prepared.json"

    # ------------------------------------------------------------------------------------------ prepare

    def prepare(self) -> dict:
        """Test set, plans for both networks, folds: once per output folder (every shard waits for the first)."""
        with exclusive(self.root / "prepare.lock"):
            if self.marker.is_file():
                prepared = self.load_prepared()
                self.check_folds()
                return prepared
            start = time.perf_counter()
            plan = plan_dataset(self.args, self.root / "nnUNet_raw", self.grouping)
            self.workspace.dataset = plan.dataset_id
            if plan.test_kind == HOLDOUT:
                holdout = ["--count", str(self.args.holdout), *self.grouping.arguments(), "--overwrite"]
                self.workspace.plugin("holdout", str(plan.source), "-d", plan.dataset_id, *holdout)
            elif plan.folder.resolve() != plan.source:
                self.workspace.run("ln", "-sfn", str(plan.source), str(plan.folder))
            encoder_args = ["--encoder", self.args.encoder, "--embedding-cache", self.args.embedding_cache]
            encoder_args += self.input_size_args()
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

    def check_folds(self) -> None:
        """Refuse, in one line, budgets or seeds the output folder has no folds for.

        The folds are drawn once, when the folder is prepared, and its runs are named by fold number: drawing
        them again for more budgets would renumber the folds under the runs already there. Without this, a
        folder prepared with ``--budgets 1`` and run with ``--budgets 1 5`` failed part-way with an IndexError.
        """
        seeds = Counter(fold["budget"] for fold in self.folds())
        short = [budget for budget in self.args.budgets if seeds[budget] < self.args.seeds]
        if short:
            has = ", ".join(f"{budget} ({count} seeds)" for budget, count in sorted(seeds.items()))
            raise InputError(
                f"{self.root} holds folds for budgets {has}, not for --budgets {' '.join(map(str, short))} at "
                f"--seeds {self.args.seeds}: ask for what it holds, or give those budgets another --output"
            )

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

    def folds(self) -> list:
        return json.loads((self.preprocessed() / "few_label_splits.json").read_text())["folds"]

    def all_lines(self) -> list:
        return all_lines(self.args.methods, self.args.budgets)

    def line_cost(self, line: Line) -> float:
        return line.cost(self.schedule, self.ladder.rungs_for(line.method), self.args.seeds, len(self.variants))

    def line_folds(self, line: Line) -> list:
        """The folds of a line's budget, seed 0 first; seed 0 alone for a one-seed method."""
        folds = sorted((f for f in self.folds() if f["budget"] == line.budget), key=lambda f: f["seed"])
        return folds[:1] if line.method in self.schedule.one_seed_methods else folds

    def trainer(self, method: str) -> str:
        if method == "nnunet" and self.args.schedule == "full":
            return "nnUNetTrainer"  # the full schedule is stock nnU-Net itself
        return METHODS[method].trainer

    def plans(self, method: str, prepared: dict) -> str:
        return prepared["sam_plans"] if METHODS[method].sam_plans else prepared["stock_plans"]

    def folder(self, method: str, prepared: dict) -> str:
        """nnU-Net's results folder name of a method: Trainer__plans__2d."""
        return f"{self.trainer(method)}__{self.plans(method, prepared)}__2d"

    def results_root(self, steps: int) -> Path:
        """nnUNet_results of the trainings at ``steps`` steps: one per rung, as nnU-Net keeps one model per fold."""
        return self.root / "nnUNet_results" / f"steps_{steps}"

    def chosen_root(self) -> Path:
        """An nnUNet_results of every method's folds at the steps their validation chose (links into the rungs'):
        the report scores it, and nnUNetv2_predict runs from it as from any results folder."""
        return self.root / "nnUNet_results" / "chosen"

    def choose(self, method: str, fold: int, steps: int, prepared: dict, variant=None) -> None:
        """Link a fold trained at ``steps`` into the chosen results as the dataset's fold ``fold`` (a student's
        model, fold 0 of its own dataset, too), with its method folder's plans and dataset."""
        trained = self.fold_dir(method, fold, steps, prepared, variant)
        method_dir = self.chosen_root() / self.workspace.dataset_name / trained.parent.name
        method_dir.mkdir(parents=True, exist_ok=True)
        for name in ("dataset.json", "plans.json", "dataset_fingerprint.json"):
            if (trained.parent / name).is_file():
                shutil.copyfile(trained.parent / name, method_dir / name)
        link = method_dir / f"fold_{fold}"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(trained, method_dir), target_is_directory=True)

    def fold_dir(self, method: str, fold: int, steps: int, prepared: dict, variant=None) -> Path:
        """Where nnU-Net trains a fold: the dataset's fold, or fold 0 of the fold's student dataset of ``variant``."""
        if variant is not None:
            return self.results_root(steps) / self.student(fold, variant)[1] / self.folder(method, prepared) / "fold_0"
        return self.results_root(steps) / self.workspace.dataset_name / self.folder(method, prepared) / f"fold_{fold}"

    def workspace_at(self, steps: int, dataset: str | None = None) -> LoggedWorkspace:
        """The workspace whose trainings run ``steps`` steps into their own nnUNet_results (on ``dataset``, by
        default the comparison's)."""
        settings = {**self.schedule.environment(steps), "nnUNet_results": str(self.results_root(steps))}
        workspace = LoggedWorkspace(self.root, {**self.workspace.settings, **settings}, shown=settings)
        workspace.dataset = dataset or self.workspace.dataset
        return workspace

    def chosen_workspace(self) -> LoggedWorkspace:
        """The workspace whose nnUNet_results is the chosen one: the report, and the teachers labelling a fold."""
        chosen = {**self.workspace.settings, "nnUNet_results": str(self.chosen_root())}
        workspace = LoggedWorkspace(self.root, chosen, shown={"nnUNet_results": chosen["nnUNet_results"]})
        workspace.dataset = self.workspace.dataset
        return workspace

    # ------------------------------------------------------------------------------- pseudo-label students

    def student_record(self, name: str) -> Path:
        return self.runs_dir / "students" / f"{name}.json"

    def student_name(self, fold: int, variant: PseudoVariant) -> str:
        """NAME of the student dataset of ``fold`` and ``variant``, and of its record under runs/students."""
        return f"{short_name(Path(self.workspace.dataset_name))}_{variant.key}_fold{fold}"

    def student(self, fold: int, variant: PseudoVariant) -> tuple:
        """(id, DatasetXXX_NAME) of the student dataset of ``fold`` and ``variant``. Its id is given once, the
        lowest free one from 600, and kept in its record under runs/ so that a new machine makes it under the
        same id."""
        name = self.student_name(fold, variant)
        record = self.student_record(name)
        with exclusive(self.root / "locks" / "students.lock"):
            if not record.is_file():
                given = {json.loads(path.read_text())["dataset_id"] for path in record.parent.glob("*.json")}
                taken = {int(path.name[7:10]) for path in (self.root / "nnUNet_raw").glob("Dataset[0-9][0-9][0-9]_*")}
                write_json({"run": name, "dataset_id": min(set(range(600, 1000)) - taken - given)}, record)
            dataset_id = json.loads(record.read_text())["dataset_id"]
        return str(dataset_id), f"Dataset{dataset_id:03d}_{name}"

    def nnunet_target(self, fold: int, variant) -> tuple:
        """(dataset id, fold) that nnU-Net trains and predicts a fold on: a student is fold 0 of its own dataset."""
        return (self.student(fold, variant)[0], 0) if variant is not None else (self.workspace.dataset, fold)

    def fold_budget(self, fold: int) -> int:
        return next(split["budget"] for split in self.folds() if split["fold"] == fold)

    def make_student(self, fold: int, variant: PseudoVariant, prepared: dict) -> None:
        """The fold's student dataset of ``variant``, once: every teacher trained on the fold at the steps its own
        seed 0 chose and linked into the chosen results, then ``nnunet-autosam pseudo-labels`` from there."""
        dataset, name = self.student(fold, variant)
        short = self.student_name(fold, variant)
        record = self.student_record(short)
        preprocessed = self.root / "nnUNet_preprocessed" / name / "splits_final.json"
        with exclusive(self.root / "locks" / f"{name}.lock"):
            if "wall_s" in json.loads(record.read_text()) and preprocessed.is_file():
                return
            teachers = []
            for teacher in variant.teachers:
                seed_zero = self.line_folds(Line(teacher, self.fold_budget(fold)))[0]["fold"]
                choice = self.climb(teacher, seed_zero, prepared)
                self.train(teacher, fold, choice.steps, prepared, to_predict=True)
                self.choose(teacher, fold, choice.steps, prepared)
                teachers += ["--teacher", f"{self.trainer(teacher)}:{self.plans(teacher, prepared)}"]
            tqdm.write(f"{now()} {PSEUDO} fold {fold}: the teachers label the unlabelled units ({variant.text})")
            start = time.perf_counter()
            options = ["--min-confidence", str(variant.min_confidence)]
            options += ["--labelled-weight", str(variant.labelled_weight)]
            self.chosen_workspace().plugin(
                "pseudo-labels",
                self.workspace.dataset,
                "-f",
                str(fold),
                *teachers,
                "--student-id",
                dataset,
                "--name",
                short,
                "-p",
                prepared["stock_plans"],
                *options,
                "--device",
                self.args.device,
                "--no-tta",
                "-np",
                "1",
                "--overwrite",
            )
            student_raw = self.root / "nnUNet_raw" / name
            made = json.loads((student_raw / "pseudo_labels.json").read_text())
            source_raw = self.root / "nnUNet_raw" / self.workspace.dataset_name
            summary = {
                "run": short,
                "dataset_id": int(dataset),
                "fold": fold,
                "variant": variant.text,
                "unlabelled": len(made["unlabelled"]),
                **publish.score_pseudo_labels(student_raw, source_raw),
                "wall_s": round(time.perf_counter() - start, 1),
                "finished": now(),
                "machine": machine(),
                "device": self.args.device,
            }
            write_json(summary, record)

    def variant_dice(self, fold: int) -> dict:
        """{variant: validation Dice} of the fold's students trained at the pseudo-label method's lowest rung."""
        rung = self.ladder.rungs_for(PSEUDO)[0]
        found = {}
        for variant in self.variants:
            path = self.training_record(variant.key, fold, rung)
            if path.is_file():
                found[variant] = json.loads(path.read_text())["val_dice"]
        return found

    def chosen_variant(self, fold: int) -> PseudoVariant | None:
        """The variant with the best validation Dice at the lowest rung (the first listed on a tie), once every
        variant has trained there; None before."""
        dice = self.variant_dice(fold)
        return max(self.variants, key=dice.__getitem__) if len(dice) == len(self.variants) else None

    def choose_variant(self, fold: int, prepared: dict) -> PseudoVariant:
        """Seed 0's student of every variant at the lowest rung, then the one its validation chose."""
        rung = self.ladder.rungs_for(PSEUDO)[0]
        for variant in self.variants:
            tqdm.write(f"{now()} {PSEUDO} fold {fold}: {rung} steps, variant {variant.text}")
            self.train(PSEUDO, fold, rung, prepared, variant=variant)
        chosen = self.chosen_variant(fold)
        assert chosen is not None  # every variant has its record now
        return chosen

    def zero_shot_dir(self) -> Path:
        return self.root / "zero_shot" / f"zero_shot_{self.args.encoder}"

    def training_record(self, method: str, fold: int, steps: int) -> Path:
        return self.runs_dir / "training" / f"{method}_fold{fold}_{steps}steps.json"

    def final_checkpoint(self, method: str, fold: int, steps: int, prepared: dict, variant=None) -> Path:
        """The model a training leaves; a test prediction needs it, and it does not travel with ``runs/``."""
        return self.fold_dir(method, fold, steps, prepared, variant) / TRAINED_MARKER

    def validation_dice(self, method: str, fold: int) -> dict:
        """{steps: mean foreground Dice in %} of nnU-Net's final validation, for every rung trained so far."""
        found = {}
        for steps in self.ladder.rungs:
            path = self.training_record(method, fold, steps)
            if path.is_file():
                found[steps] = json.loads(path.read_text())["val_dice"]
        return found

    def train(self, method: str, fold: int, steps: int, prepared: dict, to_predict: bool = False, variant=None):
        """Train one fold at ``steps`` (a pseudo-label student: of ``variant``) and score its validation; returns
        its record. An interrupted attempt resumes from its last checkpoint through nnU-Net's own ``--c``, or
        starts again from scratch where it left none. Shards that need one training (a teacher's) take turns.

        A finished training's record is enough for the ladder, so records copied onto another machine (``runs/``
        is small; checkpoints are not) keep every rung's decision; a fold ``to_predict`` whose final checkpoint
        did not come with its record is trained again."""
        marker = self.training_record(run_key(method, variant), fold, steps)
        with exclusive(self.root / "locks" / f"{marker.stem}.lock"):
            final = self.final_checkpoint(method, fold, steps, prepared, variant)
            if marker.is_file() and (not to_predict or final.is_file()):
                return json.loads(marker.read_text())
            return self.train_now(method, fold, steps, prepared, variant, marker)

    def train_now(self, method: str, fold: int, steps: int, prepared: dict, variant, marker: Path) -> dict:
        """Train as ``train`` says. A rung trained again for its model keeps the record the ladder chose on: nnU-Net
        samples its batches unseeded, so a second training's validation differs, and it must not move S after the
        test set was predicted. Its own record is ``<run>_retrained``, which the test record and the CPU hours read.
        """
        if marker.is_file():
            marker = marker.with_name(f"{marker.stem}_retrained.json")
        fold_dir = self.fold_dir(method, fold, steps, prepared, variant)
        if variant is not None:
            self.make_student(fold, variant, prepared)
        dataset, nnunet_fold = self.nnunet_target(fold, variant)
        start = time.perf_counter()
        resume = resumable(fold_dir)
        earlier_s = earlier_attempts_s(fold_dir) if resume else 0.0
        if resume:
            options = ["--c"]
        else:
            shutil.rmtree(fold_dir, ignore_errors=True)
            options = ["-pretrained_weights", str(self.simclr_checkpoint())] if method == "simclr" else []
        workspace = self.workspace_at(steps, dataset)
        workspace.train(self.trainer(method), nnunet_fold, self.plans(method, prepared), self.args.device, *options)
        summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
        record = {
            "run": marker.stem,
            "method": method,
            **({"variant": variant.text} if variant else {}),
            "fold": fold,
            "steps": steps,
            "val_dice": round(100 * summary["foreground_mean"]["Dice"], 2),
            "validation_curve": publish.validation_curve(fold_dir, self.schedule.iterations),
            "train_s": round(earlier_s + time.perf_counter() - start, 1),
            "finished": now(),
            "machine": machine(),
            "device": self.args.device,
        }
        if resume:
            record["resumed"] = True
        write_json(record, marker)
        return record

    def climb(self, method: str, fold: int, prepared: dict, variant=None):
        """Seed 0 up the ladder until its validation chooses S (or reaches the top rung)."""
        key = run_key(method, variant)
        while (steps := self.ladder.next_rung(method, self.validation_dice(key, fold))) is not None:
            tqdm.write(f"{now()} {method} fold {fold}: {steps} steps (ladder)")
            self.train(method, fold, steps, prepared, variant=variant)
        return self.ladder.choice(method, self.validation_dice(key, fold))

    def prefill_test_tiles(self, plan: Plan, plans: str) -> None:
        """The test tiles into the embedding memo in batches, once (per precision) for every head and fold."""
        marker = (
            self.root / "embedding_memo" / f"prefilled_{plans}_{embedding_precision(pick_device(self.args.device))}"
        )
        if not marker.is_file():
            self.workspace.prefill_memo(plan.test_images, plans, self.args.device)
            write_text(now() + "\n", marker)

    def test_predictions_root(self) -> Path:
        """Every fold's test predictions, in ``runs/`` so that they travel with the records (labels only, small)."""
        return self.runs_dir / "test_predictions"

    def test_predictions(self, method: str, fold: int, prepared: dict) -> Path:
        return self.test_predictions_root() / self.folder(method, prepared) / f"fold_{fold}"

    def tested(self, method: str, fold: int, steps: int, prepared: dict, variant=None) -> bool:
        """Whether the fold's test prediction was made at ``steps`` (by a student: of ``variant``), every test case
        of it here; one at other steps predates a longer ladder. Its model need not be: the predictions are what is
        scored, and they travel with ``runs/`` where checkpoints do not."""
        marker = self.runs_dir / f"{method}_fold{fold}.json"
        if not marker.is_file():
            return False
        record = json.loads(marker.read_text())
        same_variant = record.get("variant") == (variant.text if variant else None)
        cases = list_cases(self.plan_of(prepared).test_labels, DEFAULT_FILE_ENDING)
        predicted = not missing_predictions(self.test_predictions(method, fold, prepared), cases)
        return record["steps"] == steps and same_variant and predicted

    def test(self, method: str, fold: int, choice, prepared: dict, variant=None) -> None:
        """Train one fold at the chosen steps (seed 0's is the ladder's run) and predict the test set with it."""
        marker = self.runs_dir / f"{method}_fold{fold}.json"
        if self.tested(method, fold, choice.steps, prepared, variant):
            return
        training = self.train(method, fold, choice.steps, prepared, to_predict=True, variant=variant)
        plan = self.plan_of(prepared)
        plans = self.plans(method, prepared)
        predictions = self.test_predictions(method, fold, prepared)
        shutil.rmtree(predictions, ignore_errors=True)
        self.choose(method, fold, choice.steps, prepared, variant)
        start = time.perf_counter()
        if method in HEADS:
            self.prefill_test_tiles(plan, plans)
        dataset, nnunet_fold = self.nnunet_target(fold, variant)
        self.workspace_at(choice.steps, dataset).predict(
            plan.test_images, predictions, self.trainer(method), nnunet_fold, plans, self.args.device
        )
        predict_s = round(time.perf_counter() - start, 1)
        record = {
            "run": marker.stem,
            "method": method,
            **({"variant": variant.text} if variant else {}),
            "fold": fold,
            "steps": choice.steps,
            "plateau_shown": choice.plateau_shown,
            "training": training["run"],
            "val_dice": training["val_dice"],
            "train_s": training["train_s"],
            "predict_s": predict_s,
            "wall_s": round(training["train_s"] + predict_s, 1),
            "finished": now(),
            "machine": machine(),
            "device": self.args.device,
        }
        write_json(record, marker)

    def zero_shot(self, prepared: dict) -> None:
        marker = self.runs_dir / f"{ZERO_SHOT}.json"
        if marker.is_file():
            return
        plan = self.plan_of(prepared)
        start = time.perf_counter()
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
        wall_s = round(time.perf_counter() - start, 1)
        record = {"run": ZERO_SHOT, "method": ZERO_SHOT, "fold": None, "predict_s": wall_s, "wall_s": wall_s}
        record.update(finished=now(), machine=machine(), device=self.args.device)
        write_json(record, marker)

    def run_line(self, line: Line, prepared: dict) -> None:
        """A line to its end: the zero-shot baseline, or seed 0's climb and every seed at the chosen steps."""
        if line.budget is None:
            self.zero_shot(prepared)
            return
        folds = [fold["fold"] for fold in self.line_folds(line)]
        variant = self.choose_variant(folds[0], prepared) if line.method == PSEUDO else None
        choice = self.climb(line.method, folds[0], prepared, variant)
        for fold in folds:
            tqdm.write(f"{now()} {line.method} fold {fold}: {choice.steps} steps, test set")
            self.test(line.method, fold, choice, prepared, variant)

    def line_status(self, line: Line, prepared: dict) -> str:
        """Where a line stands, in words, for --plan."""
        if line.budget is None:
            return "done" if (self.runs_dir / f"{ZERO_SHOT}.json").is_file() else "to run"
        folds = [fold["fold"] for fold in self.line_folds(line)]
        variant, prefix = None, ""
        if line.method == PSEUDO:
            variant = self.chosen_variant(folds[0])
            if variant is None:
                trained = len(self.variant_dice(folds[0]))
                return f"choosing the variant, {trained} of {len(self.variants)} trained"
            prefix = f"variant {variant.text}, "
        dice = self.validation_dice(run_key(line.method, variant), folds[0])
        choice = self.ladder.choice(line.method, dice)
        if choice is None:
            return prefix + "climbing" + (f", done {' '.join(map(str, dice))}" if dice else "")
        tested = sum(self.tested(line.method, fold, choice.steps, prepared, variant) for fold in folds)
        return prefix + f"S = {choice.steps}, {tested} of {len(folds)} seeds tested"

    def measured_step_s(self, method: str) -> float | None:
        """Seconds per step of ``method``'s longest training finished on this machine and device, its start and
        final validation included (an upper bound); None where none has."""
        here = machine()
        records = [json.loads(path.read_text()) for path in (self.runs_dir / "training").glob("*.json")]
        records = [
            record
            for record in records
            if (record["method"], record["machine"], record["device"]) == (method, here, self.args.device)
        ]
        if not records:
            return None
        longest = max(records, key=lambda record: record["steps"])
        return longest["train_s"] / longest["steps"]

    def line_left_s(self, line: Line, prepared: dict) -> float:
        """At most how long the rest of a line takes: seed 0's untrained rungs (none once S is chosen), then
        every untested seed at S (the top rung while climbing), trained unless its model is here; at this
        machine's measured speed where a training of the method finished on it, else the protocol's cost.
        The pseudo-label method adds its variants still to train and a student dataset per untested seed."""
        if line.budget is None:
            return 0.0 if (self.runs_dir / f"{ZERO_SHOT}.json").is_file() else ZERO_SHOT_COST_S
        method = METHODS[line.method]
        step_s = self.measured_step_s(line.method) or method.cpu_step_s
        folds = [fold["fold"] for fold in self.line_folds(line)]
        rungs = self.ladder.rungs_for(line.method)
        variant, left, student_s = None, 0.0, 0.0
        dice = self.validation_dice(line.method, folds[0])
        if line.method == PSEUDO:
            student_s = STUDENT_DATASET_S
            variant = self.chosen_variant(folds[0])
            if variant is None:
                untrained = len(self.variants) - len(self.variant_dice(folds[0]))
                left += untrained * (step_s * rungs[0] + method.cpu_run_s + student_s)
                dice = {rungs[0]: 0.0}  # the winner's lowest rung is among them
            else:
                dice = self.validation_dice(variant.key, folds[0])
        choice = self.ladder.choice(line.method, dice)
        climb = [steps for steps in rungs if steps not in dice] if choice is None else []
        steps = rungs[-1] if choice is None else choice.steps
        left += sum(step_s * rung + method.cpu_run_s for rung in climb)
        for fold in folds:
            if choice is None and fold == folds[0]:
                continue  # its top rung is the climb's last, and predicts from there
            if choice is not None and self.tested(line.method, fold, steps, prepared, variant):
                continue
            key = run_key(line.method, variant)
            trained = self.training_record(key, fold, steps).is_file() and (
                self.final_checkpoint(line.method, fold, steps, prepared, variant).is_file()
            )
            left += method.cpu_run_s + (0.0 if trained else step_s * steps + student_s * (fold != folds[0]))
        return left

    def input_size_args(self) -> list:
        return ["--input-size", str(self.args.input_size)] if self.args.input_size else []

    def simclr_checkpoint(self) -> Path:
        """SimCLR pretraining on every training image, once for all folds, at SimCLR's top rung (its own marker)."""
        marker = self.runs_dir / "training" / "simclr_pretraining.json"
        workspace = self.workspace_at(self.ladder.rungs_for("simclr")[-1])
        with exclusive(self.root / "simclr.lock"):
            if not marker.is_file():
                start = time.perf_counter()
                workspace.pretrain_simclr(self.args.device)
                record: dict = {"run": "simclr_pretraining", "method": "simclr", "fold": None}
                record.update(
                    train_s=round(time.perf_counter() - start, 1),
                    finished=now(),
                    machine=machine(),
                    device=self.args.device,
                )
                write_json(record, marker)
        return workspace.simclr_checkpoint

    def plan(self) -> None:
        """Print every shard's lines, where each stands, and its hours at most: in all on this project's 2-core
        CPU (what shards are balanced by, so they never change), and left at this machine's measured speed."""
        prepared = self.prepare()
        every_share = shares(self.all_lines(), self.line_cost, parse_shard(self.args.shard)[1])
        for index, share in enumerate(every_share):
            hours = sum(self.line_cost(line) for line in share) / 3600
            left = {line.name: self.line_left_s(line, prepared) / 3600 for line in share}
            print(
                f"shard {index}/{len(every_share)}: at most {hours:.1f} h on a 2-core CPU, "
                f"{sum(left.values()):.1f} h left: "
                + "; ".join(
                    f"{line.name} ({self.line_status(line, prepared)}, {left[line.name]:.1f} h left)" for line in share
                )
            )

    def run_shard(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "invocations.log", "a", encoding="utf-8") as log:
            log.write(f"{now()} {machine()}: {invocation()}\n")
        prepared = self.prepare()
        lines = shard(self.all_lines(), self.line_cost, self.args.shard)
        print(f"shard {self.args.shard}: {len(lines)} lines: {' '.join(line.name for line in lines)}", flush=True)
        for line in tqdm(lines, desc=f"few-label comparison, shard {self.args.shard}", unit="line"):
            self.run_line(line, prepared)


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
    parser.add_argument(
        "--pseudo-variants",
        nargs="+",
        default=list(DEFAULT_PSEUDO_VARIANTS),
        metavar="TEACHER:CONFIDENCE:WEIGHT",
        help="for --methods pseudo: how a student dataset is made, TEACHER[+TEACHER]:MIN_CONFIDENCE:LABELLED_WEIGHT "
        "(nnunet-autosam pseudo-labels' options); seed 0's validation at the method's lowest rung picks one "
        f"(default: {' '.join(DEFAULT_PSEUDO_VARIANTS)})",
    )
    parser.add_argument("--encoder", default="lite_medsam", choices=encoders.encoder_types())
    parser.add_argument("--input-size", type=int, help="encoder input size (default: the encoder's preset)")
    parser.add_argument(
        "--channels",
        choices=STRATEGIES,
        help="how the SAM methods take several channels, passed to plans --channels: stack (up to 3 as the "
        "encoder's R, G, B) or separate (each through the encoder, fused) (default: plans' default for the "
        "channel count)",
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="cpu",
        help="cpu: a ladder of 250 to 16000 steps of 50 iterations per epoch at batch 4, ft-all on seed 0 only; "
        "full: nnU-Net's own 1000 x 250 iterations at its planned batch (default: cpu)",
    )
    parser.add_argument(
        "--ladder",
        type=int,
        nargs="+",
        metavar="STEPS",
        help="training steps to choose each method's schedule from, each twice the last (one value: a fixed "
        "schedule; default: the schedule's)",
    )
    parser.add_argument(
        "--plateau",
        type=float,
        default=2.0,
        help="S steps are enough when 2S adds less than this much validation mean Dice, in points (default: 2)",
    )
    parser.add_argument(
        "--cap",
        nargs="+",
        metavar="METHOD=STEPS",
        help="a method's highest rung, for one whose steps cost too much to climb further (e.g. ftall=500)",
    )
    parser.add_argument(
        "--start",
        nargs="+",
        metavar="METHOD=STEPS",
        help="a method's lowest rung, for one whose lower rungs an earlier run showed to climb by more than the "
        "plateau (e.g. nnunet=4000)",
    )
    parser.add_argument("--iters", type=int, help="training iterations per epoch (default: the schedule's)")
    parser.add_argument("--batch-size", type=int, help="override the schedule's batch size")
    parser.add_argument(
        "--one-seed",
        nargs="*",
        choices=[*METHODS],
        help="methods trained on seed 0 only (default: the schedule's; none: every method on every seed)",
    )
    parser.add_argument(
        "--embedding-cache",
        default="cache_views:8",
        help="how the frozen-encoder heads train, passed to plans --embedding-cache: cache_views:K (K augmented "
        "views per slice, nnU-Net's augmentation, embedded once), cache (each slice's centre patch, no "
        "augmentation) or off (default: cache_views:8)",
    )
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
