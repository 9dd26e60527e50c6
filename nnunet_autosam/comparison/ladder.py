"""The schedule ladder: how many training steps each method gets, shown to be enough on validation alone.

A comparison is only as strong as its baseline, and a method stopped before its plateau measures the schedule,
not the method. So, with ``compare --ladder 250 500 1000 ...``, seed 0 of every method and budget trains at the
rungs in turn (each twice the last), each run from scratch with its own poly learning-rate decay, and is scored
by nnU-Net's final validation on the shared validation units. S steps are enough when 2S adds less than
``--plateau`` points of mean Dice; the climb stops there and every seed of that method and budget trains at S.
Methods reach their plateau at different S. A method that reaches its top rung (the ladder's, or its
``--cap``) without a plateau is trained at the top and the table says so. A method whose lower rungs an earlier
run showed to climb by more than the plateau can start higher (``--start nnunet=4000``), saving their hours;
the table says that too. The test set plays no part.
"""

from dataclasses import dataclass, field

from nnunet_autosam.utilities.errors import InputError


@dataclass(frozen=True)
class Choice:
    steps: int
    plateau_shown: bool  # False: the top rung was reached without 2S adding less than the plateau points


@dataclass(frozen=True)
class Ladder:
    rungs: tuple
    plateau_points: float = 2.0
    caps: dict = field(default_factory=dict)  # method -> its highest rung
    starts: dict = field(default_factory=dict)  # method -> its lowest rung

    def __post_init__(self):
        if not self.rungs or any(upper != 2 * lower for lower, upper in zip(self.rungs, self.rungs[1:])):
            raise InputError(
                f"--ladder {' '.join(map(str, self.rungs))} is not a doubling ladder: give steps that each double "
                f"the last, e.g. --ladder 250 500 1000 2000"
            )
        for option, bounds in (("cap", self.caps), ("start", self.starts)):
            for method, steps in bounds.items():
                if steps not in self.rungs:
                    raise InputError(
                        f"--{option} {method}={steps} is not a rung of the ladder: give one of "
                        f"{' '.join(map(str, self.rungs))}"
                    )
        for method in set(self.caps) & set(self.starts):
            if self.starts[method] > self.caps[method]:
                raise InputError(
                    f"--start {method}={self.starts[method]} is above --cap {method}={self.caps[method]}: "
                    f"start at or below the cap"
                )

    def rungs_for(self, method: str) -> tuple:
        start, cap = self.starts.get(method, self.rungs[0]), self.caps.get(method, self.rungs[-1])
        return tuple(steps for steps in self.rungs if start <= steps <= cap)

    def choice(self, method: str, dice: dict) -> Choice | None:
        """S for ``method`` from its seed-0 validation Dice per rung ({steps: mean Dice in %}); None: climb on."""
        rungs = self.rungs_for(method)
        for lower, upper in zip(rungs, rungs[1:]):
            if lower not in dice or upper not in dice:
                return None
            if dice[upper] - dice[lower] < self.plateau_points:
                return Choice(lower, True)
        return Choice(rungs[-1], False) if rungs[-1] in dice else None

    def next_rung(self, method: str, dice: dict) -> int | None:
        """The next rung seed 0 of ``method`` trains at, or None once S is chosen."""
        if self.choice(method, dice) is not None:
            return None
        return next(steps for steps in self.rungs_for(method) if steps not in dice)


def parse_method_steps(texts, option: str) -> dict:
    """``--cap ftall=500 cnn=1000`` (or ``--start``) -> {method: steps}."""
    found = {}
    for text in texts or ():
        method, _, steps = text.partition("=")
        if not steps.isdigit():
            raise InputError(f"--{option} {text!r} is not METHOD=STEPS: write e.g. --{option} ftall=500")
        found[method] = int(steps)
    return found
