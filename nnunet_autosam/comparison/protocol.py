"""The few-label protocol's fixed parts: the methods, the schedules, the lines of runs and how shards share them.

Every method trains at the same batch size on the same folds, for the steps its validation chose on the
schedule's ladder (comparison/ladder.py). A line is one method at one budget (the climb on seed 0, then
every seed at the chosen steps, each predicting the test set), or the zero-shot baseline. Costs are this project's
measurements on its 2-core CPU in bf16 (AMD EPYC, AVX512-BF16): training steps at batch 4, nnU-Net's from a
2000-step ACDC run, the heads' from cached embeddings (a few steps timed beside another job, halved), ft-all's
the fp32 figure of its idle ACDC run, an upper bound; they balance shards and let ``--plan`` say how long each
takes, and a head from outside the project is costed as AutoSAM.

The pseudo-label method (``pseudo``) is nnU-Net trained on a fold's labelled units plus its teachers' labels of
the fold's unlabelled ones (training/pseudo_labels.py). How it is made (which teachers, which voxels are
dropped as doubtful, how much the real labels weigh) is a variant; seed 0 trains one student per variant at
the method's lowest rung, its validation picks the variant, and that variant climbs the ladder as any method.
"""

from dataclasses import dataclass

from nnunet_autosam.model.heads import HEADS
from nnunet_autosam.utilities.commands import BASELINE_TRAINER, FULL_FT_TRAINER, PSEUDO_LABEL_TRAINER, SIMCLR_TRAINER
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.shards import parse_shard


@dataclass(frozen=True)
class Method:
    trainer: str
    sam_plans: bool  # the encoder's plans; otherwise nnU-Net's own network
    # Expected cost on this project's 2-core CPU, for shard balancing and --plan: seconds per training step at
    # batch 4, and seconds per run besides the steps (start, final validation, predicting 20 test patients).
    cpu_step_s: float
    cpu_run_s: float


HEAD_CPU_COSTS = {"autosam": (0.6, 150.0), "linear": (0.35, 120.0), "cnn": (8.0, 1200.0)}


def method_table() -> dict:
    """Method name -> Method: stock nnU-Net, every registered head on the frozen encoder, ft-all, SimCLR."""
    return {
        "nnunet": Method(BASELINE_TRAINER, False, 1.2, 230.0),
        **{
            name: Method(spec.trainer, True, *HEAD_CPU_COSTS.get(name, HEAD_CPU_COSTS["autosam"]))
            for name, spec in HEADS.items()
        },
        "ftall": Method(FULL_FT_TRAINER, True, 14.0, 1700.0),
        "simclr": Method(SIMCLR_TRAINER, False, 1.2, 230.0),
        PSEUDO: Method(PSEUDO_LABEL_TRAINER, False, 1.2, 230.0),
    }


PSEUDO = "pseudo"
METHODS = method_table()
ZERO_SHOT = "zero_shot"
DEFAULT_METHODS = ("nnunet", "autosam", "linear", "cnn", "ftall", ZERO_SHOT)
ZERO_SHOT_COST_S = 500.0  # about one encoder pass per test slice
# A student dataset: the teachers predicting the unlabelled units, then nnU-Net preprocessing them (an estimate)
STUDENT_DATASET_S = 900.0
# Keep every voxel; drop the doubtful ones; drop them and draw the real labels ten times as often.
DEFAULT_PSEUDO_VARIANTS = ("autosam:0:1", "autosam:0.8:1", "autosam:0.8:10")


@dataclass(frozen=True)
class PseudoVariant:
    """How a student dataset is made: TEACHER[+TEACHER...]:MIN_CONFIDENCE:LABELLED_WEIGHT (pseudo-labels' options)."""

    teachers: tuple
    min_confidence: float
    labelled_weight: int

    @classmethod
    def parse(cls, text: str) -> "PseudoVariant":
        parts = text.split(":")
        problem = f"--pseudo-variants {text!r} is not TEACHER[+TEACHER]:MIN_CONFIDENCE:LABELLED_WEIGHT"
        if len(parts) != 3 or not parts[0]:
            raise InputError(f"{problem}: write e.g. autosam:0.8:10")
        teachers = tuple(parts[0].split("+"))
        for teacher in teachers:
            if teacher not in METHODS or teacher == PSEUDO:
                teachers_known = ", ".join(name for name in METHODS if name != PSEUDO)
                raise InputError(f"{problem}: teacher {teacher!r} is not a trained method; use one of {teachers_known}")
        try:
            confidence, weight = float(parts[1]), int(parts[2])
        except ValueError:
            raise InputError(f"{problem}: write the confidence as a number and the weight as a whole number") from None
        if not 0 <= confidence < 1 or weight < 1:
            raise InputError(f"{problem}: the confidence must lie in [0, 1) and the weight be at least 1")
        return cls(teachers, confidence, weight)

    @property
    def text(self) -> str:
        return f"{'+'.join(self.teachers)}:{self.min_confidence:g}:{self.labelled_weight}"

    @property
    def key(self) -> str:
        """Its students' records' and datasets' name: letters, digits and underscores only."""
        confidence = f"{self.min_confidence:g}".replace(".", "p")
        return f"{PSEUDO}_{'_'.join(self.teachers)}_c{confidence}_w{self.labelled_weight}"


def run_key(method: str, variant) -> str:
    """What a method's training records are named by: the method, or a pseudo-label student's variant."""
    return variant.key if variant is not None else method


@dataclass(frozen=True)
class Schedule:
    """How every method trains: the ladder of step counts its S is chosen from (comparison/ladder.py), the
    iterations per epoch and the batch size they share."""

    rungs: tuple  # training steps, each twice the last
    iterations: int  # per epoch
    batch_size: int | None  # None: nnU-Net's planned 2d batch size
    one_seed_methods: tuple  # methods trained on seed 0 only
    validation_iterations: int = 2  # per epoch: nnU-Net's pseudo-Dice, the validation curves' points
    checkpoint_steps: int | None = 250  # between checkpoint_latest.pth saves; None: nnU-Net's every 50 epochs

    def environment(self, steps: int) -> dict:
        """The AUTOSAM_* variables that make every trainer run ``steps`` training steps."""
        if steps % self.iterations:
            raise InputError(
                f"{steps} steps is not a whole number of epochs of {self.iterations} iterations: pass --iters "
                f"that divides every rung of --ladder"
            )
        environment = {
            "AUTOSAM_NUM_EPOCHS": str(steps // self.iterations),
            "AUTOSAM_ITERS_PER_EPOCH": str(self.iterations),
            "AUTOSAM_VAL_ITERS_PER_EPOCH": str(self.validation_iterations),
        }
        if self.checkpoint_steps:  # a CPU training runs for hours: a killed one resumes from at most this far back
            environment["AUTOSAM_SAVE_EVERY"] = str(max(1, self.checkpoint_steps // self.iterations))
        return environment

    def describe(self, steps: int) -> str:
        return f"{steps // self.iterations} x {self.iterations} iterations"


# cpu: a doubling ladder from 250 to 16000 steps at batch 4 (on ACDC, nnU-Net at one labelled patient still gained
# 5.8 points of validation Dice from 2000 to 4000); training the encoder (ft all) on seed 0 only, as its step costs
# about 20 of a head's on 2 cores. full: nnU-Net's own 1000 x 250 iterations at its planned batch, for a GPU.
SCHEDULES = {
    "cpu": Schedule((250, 500, 1000, 2000, 4000, 8000, 16000), 50, 4, ("ftall",)),
    "full": Schedule((250_000,), 250, None, (), validation_iterations=50, checkpoint_steps=None),
}


def custom_schedule(name: str, rungs=None, iterations=None, batch_size=None, one_seed=None) -> Schedule:
    """The named schedule with any of its parts replaced (a smoke test's, say)."""
    base = SCHEDULES[name]
    return Schedule(
        tuple(rungs or base.rungs),
        iterations or base.iterations,
        batch_size or base.batch_size,
        base.one_seed_methods if one_seed is None else tuple(one_seed),
        base.validation_iterations,
        base.checkpoint_steps,
    )


@dataclass(frozen=True)
class Line:
    """One method at one budget: seed 0 climbs the ladder, then every seed trains at the chosen S and predicts
    the test set. The zero-shot baseline is a line of its own (budget None). Lines share nothing, so shards
    take whole lines."""

    method: str
    budget: int | None = None

    @property
    def name(self) -> str:
        return self.method if self.budget is None else f"{self.method}_budget{self.budget}"

    def cost(self, schedule: Schedule, rungs: tuple, seeds: int, variants: int = 1) -> float:
        """At most: every rung on seed 0, the top one on the other seeds, each run's fixed part and prediction;
        for the pseudo-label method also every other variant at the lowest rung and every student dataset (not
        its teachers, whose own lines are costed)."""
        if self.budget is None:
            return ZERO_SHOT_COST_S
        method = METHODS[self.method]
        if self.method in schedule.one_seed_methods:
            seeds = 1
        if self.method != PSEUDO:
            variants = 1
        steps = sum(rungs) + (seeds - 1) * rungs[-1] + (variants - 1) * rungs[0]
        runs = len(rungs) + seeds - 1 + variants - 1
        students = (variants + seeds - 1) * STUDENT_DATASET_S if self.method == PSEUDO else 0.0
        return method.cpu_step_s * steps + method.cpu_run_s * runs + students


def all_lines(methods, budgets) -> list:
    lines = []
    for method in methods:
        lines += [Line(ZERO_SHOT)] if method == ZERO_SHOT else [Line(method, budget) for budget in budgets]
    return lines


def shares(lines: list, cost, count: int) -> list:
    """Every shard's lines in running order, assigned dearest first to the least loaded shard.

    Within a shard the lines go cheapest first, so that a shard stopped early leaves the most lines finished
    (the cheap comparison of nnU-Net, AutoSAM, linear and zero-shot before the hours-long CNN and ft-all).
    """
    loads = [0.0] * count
    assigned: list[list[Line]] = [[] for _ in range(count)]
    for line in sorted(lines, key=lambda item: (-cost(item), item.name)):
        target = loads.index(min(loads))
        loads[target] += cost(line)
        assigned[target].append(line)
    return [sorted(share, key=lambda item: (cost(item), item.name)) for share in assigned]


def shard(lines: list, cost, text: str) -> list:
    """The lines of shard ``text`` (``i/n``), in running order."""
    index, count = parse_shard(text)
    return shares(lines, cost, count)[index]
