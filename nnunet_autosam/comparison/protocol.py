"""The few-label protocol's fixed parts: the methods, the schedules, the runs and how shards share them.

Every method trains with the same iterations and batch size on the same folds; a run is one method on
one fold (train, then predict the test set), or the zero-shot baseline. Costs are this project's
measurements on its 2-core CPU (the cpu schedule's ACDC runs in results/acdc_lite_medsam, mostly idle;
ft-all from its fold-3 run, which had the CPU to itself); they balance shards and let ``--plan`` say
how long each takes, and a head from outside the project is costed as AutoSAM.
"""

from dataclasses import dataclass

from nnunet_autosam.model.heads import HEADS
from nnunet_autosam.utilities.commands import BASELINE_TRAINER, FULL_FT_TRAINER, SIMCLR_TRAINER
from nnunet_autosam.utilities.shards import parse_shard


@dataclass(frozen=True)
class Method:
    trainer: str
    sam_plans: bool  # the encoder's plans; otherwise nnU-Net's own network
    # Expected cost on this project's 2-core CPU, for shard balancing and --plan: seconds per training step at
    # batch 4, and seconds per run besides the steps (start, final validation, predicting 20 test patients).
    cpu_step_s: float
    cpu_run_s: float


HEAD_CPU_COSTS = {"autosam": (0.65, 75.0), "linear": (0.45, 50.0), "cnn": (10.5, 1200.0)}


def method_table() -> dict:
    """Method name -> Method: stock nnU-Net, every registered head on the frozen encoder, ft-all, SimCLR."""
    return {
        "nnunet": Method(BASELINE_TRAINER, False, 1.7, 230.0),
        **{
            name: Method(spec.trainer, True, *HEAD_CPU_COSTS.get(name, HEAD_CPU_COSTS["autosam"]))
            for name, spec in HEADS.items()
        },
        "ftall": Method(FULL_FT_TRAINER, True, 14.0, 1700.0),
        "simclr": Method(SIMCLR_TRAINER, False, 1.7, 230.0),
    }


METHODS = method_table()
ZERO_SHOT = "zero_shot"
DEFAULT_METHODS = ("nnunet", "autosam", "linear", "cnn", "ftall", ZERO_SHOT)
ZERO_SHOT_COST_S = 500.0  # about one encoder pass per test slice
LONG_RUN_S = 1800.0


@dataclass(frozen=True)
class Schedule:
    epochs: int | None  # None: nnU-Net's own
    iterations: int | None
    batch_size: int | None  # None: nnU-Net's planned 2d batch size
    one_seed_methods: tuple  # methods trained on seed 0 only

    def environment(self) -> dict:
        if self.epochs is None:
            return {}
        return {
            "AUTOSAM_NUM_EPOCHS": str(self.epochs),
            "AUTOSAM_ITERS_PER_EPOCH": str(self.iterations),
            "AUTOSAM_VAL_ITERS_PER_EPOCH": "1",
        }

    def describe(self) -> str:
        return f"{self.epochs} x {self.iterations} iterations" if self.epochs else "nnU-Net's 1000 x 250 iterations"


# cpu: sized so that the dearest run (training the encoder, about 14 s per step on 2 cores) fits in 2 hours.
SCHEDULES = {
    "cpu": Schedule(10, 20, 4, ("cnn", "ftall")),
    "full": Schedule(None, None, None, ()),
}


def custom_schedule(name: str, epochs=None, iterations=None, batch_size=None) -> Schedule:
    """The named schedule with any of its numbers replaced (a smoke test's, say)."""
    base = SCHEDULES[name]
    if not (epochs or iterations or batch_size):
        return base
    return Schedule(
        epochs or base.epochs or 1000,
        iterations or base.iterations or 250,
        batch_size or base.batch_size,
        base.one_seed_methods,
    )


@dataclass(frozen=True)
class Run:
    """One method on one fold (train, then predict the test set), or the zero-shot baseline (fold None)."""

    method: str
    fold: int | None = None

    @property
    def name(self) -> str:
        return self.method if self.fold is None else f"{self.method}_fold{self.fold}"

    def cost(self, schedule: Schedule) -> float:
        if self.fold is None:
            return ZERO_SHOT_COST_S
        method = METHODS[self.method]
        return method.cpu_step_s * (schedule.epochs or 1000) * (schedule.iterations or 250) + method.cpu_run_s


def all_runs(methods, folds: list, schedule: Schedule) -> list:
    """Every run of ``methods`` on the split table's ``folds``: seed 0 only for the schedule's one-seed methods."""
    runs = []
    for method in methods:
        if method == ZERO_SHOT:
            runs.append(Run(ZERO_SHOT))
            continue
        for fold in folds:
            if fold["seed"] == 0 or method not in schedule.one_seed_methods:
                runs.append(Run(method, fold["fold"]))
    return runs


def shares(runs: list, schedule: Schedule, count: int) -> list:
    """Every shard's runs in running order, assigned longest first to the least loaded shard.

    Within a shard the runs under half an hour go first, fold by fold, so that the cheap comparison
    (nnU-Net, AutoSAM, linear, zero-shot) of whole folds lands before the hours-long runs start; these then
    go cheapest first, so that a shard stopped early leaves the most runs finished.
    """
    loads = [0.0] * count
    assigned: list[list[Run]] = [[] for _ in range(count)]
    for run in sorted(runs, key=lambda r: (-r.cost(schedule), r.name)):
        target = loads.index(min(loads))
        loads[target] += run.cost(schedule)
        assigned[target].append(run)

    def order(run: Run) -> tuple:
        cost = run.cost(schedule)
        if cost > LONG_RUN_S:
            return 1, cost, run.name
        return 0, -1 if run.fold is None else run.fold, cost

    return [sorted(share, key=order) for share in assigned]


def shard(runs: list, schedule: Schedule, text: str) -> list:
    """The runs of shard ``text`` (``i/n``), in running order."""
    index, count = parse_shard(text)
    return shares(runs, schedule, count)[index]
