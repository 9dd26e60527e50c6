"""Cases that belong together: the units that a test set, a budget and the validation set are drawn in.

Frames, time points or sides of one patient must never sit on two sides of a split: a head trained on a
patient's ED frame and scored on its ES frame is scored on what it saw. A unit is therefore what every
draw counts (budgets count units, not cases), and it comes from, in this order: a pattern on the case
ids or a JSON map given on the command line (``--group-pattern``, ``--group-map``); ``units.json``,
which ``nnunet-autosam holdout`` writes into the datasets it derives; ``acdc_info.json``, which
``convert-acdc`` writes (ACDC's patients, stratified by pathology group); else each case is its own
unit. Draws can be stratified by a stratum per unit (``--strata FILE``, or ACDC's groups).
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_autosam.utilities.errors import InputError

UNITS_FILE = "units.json"  # unit -> {"cases", "stratum", "subset"}, written by nnunet-autosam holdout
ACDC_INFO_FILE = "acdc_info.json"
TRAINING_SUBSET = "training"
HOLDOUT_SUBSET = "holdout"  # training units set aside as the test set
HOLDOUT_SEED = 20180  # fixed, so every holdout of N units from one dataset holds out the same units

Units = dict[str, tuple[str | None, list[str]]]  # unit id -> (stratum, case ids)


@dataclass(frozen=True)
class Grouping:
    """How the user groups cases into units and units into strata; all None: as the dataset records it."""

    pattern: str | None = None  # a regex searched in each case id: its first group (or the match) names the unit
    map_file: Path | None = None  # JSON {case: unit} or {unit: [cases]}
    strata_file: Path | None = None  # JSON {unit: stratum}

    def arguments(self) -> list[str]:
        """The command-line options that give this grouping to another command."""
        options = []
        for flag, value in (("--group-pattern", self.pattern), ("--group-map", self.map_file)):
            if value is not None:
                options += [flag, str(value)]
        return options + (["--strata", str(self.strata_file)] if self.strata_file else [])

    @property
    def given(self) -> bool:
        return self.pattern is not None or self.map_file is not None


def read_json_map(path: Path, what: str) -> dict:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {what} {path} ({error}): pass a JSON file as the help describes") from None
    if not isinstance(value, dict):
        raise InputError(f"{what} {path} is not a JSON object: write {{name: value, ...}}")
    return value


def unit_of_case(grouping: Grouping, cases: list[str]) -> dict[str, str]:
    """Case id -> unit id from the pattern or the map; every case must get one."""
    if grouping.pattern is not None:
        try:
            pattern = re.compile(grouping.pattern)
        except re.error as error:
            raise InputError(f"--group-pattern {grouping.pattern!r} is not a regular expression ({error})") from None
        found = {}
        for case in cases:
            match = pattern.search(case)
            if match is None:
                raise InputError(
                    f"case {case} does not match --group-pattern {grouping.pattern!r}: give a pattern that "
                    f"every case id matches, e.g. '(patient\\d+)_'"
                )
            found[case] = match.group(1) if pattern.groups else match.group(0)
        return found
    assert grouping.map_file is not None
    raw = read_json_map(grouping.map_file, "--group-map")
    mapping = {}
    for key, value in raw.items():
        for case in value if isinstance(value, list) else [key]:
            mapping[case] = key if isinstance(value, list) else str(value)
    missing = [case for case in cases if case not in mapping]
    if missing:
        raise InputError(
            f"--group-map {grouping.map_file} names no unit for {len(missing)} cases (e.g. {missing[0]}): "
            f"add every case of labelsTr"
        )
    return {case: mapping[case] for case in cases}


def units_from_grouping(cases: list[str], grouping: Grouping) -> Units:
    """Unit -> (stratum, cases) for the given cases: from the pattern or map, else one case per unit."""
    units: dict[str, list[str]] = {}
    for case, unit in (unit_of_case(grouping, cases) if grouping.given else {c: c for c in cases}).items():
        units.setdefault(unit, []).append(case)
    return with_strata({unit: (None, sorted(members)) for unit, members in sorted(units.items())}, grouping)


def with_strata(units: Units, grouping: Grouping) -> Units:
    """The units with the strata of ``--strata`` (when given) in place of their own."""
    if grouping.strata_file is None:
        return units
    strata = read_json_map(grouping.strata_file, "--strata")
    unknown = sorted(set(units) - set(strata))
    if unknown:
        raise InputError(f"--strata {grouping.strata_file} gives no stratum for unit {unknown[0]}: add every unit")
    return {unit: (str(strata[unit]), cases) for unit, (_, cases) in units.items()}


def recorded_units(raw_dataset: Path) -> Units | None:
    """The training units a dataset records (units.json, else acdc_info.json), or None."""
    for name, stratum_key in ((UNITS_FILE, "stratum"), (ACDC_INFO_FILE, "Group")):
        path = raw_dataset / name
        if path.is_file():
            info = json.loads(path.read_text(encoding="utf-8"))
            return {
                unit: (entry.get(stratum_key), sorted(entry["cases"]))
                for unit, entry in sorted(info.items())
                if entry["subset"] == TRAINING_SUBSET
            }
    return None


def dataset_units(raw_dataset: Path, cases: list[str], grouping: Grouping | None = None) -> Units:
    """Unit -> (stratum, cases) over the dataset's labelled training ``cases`` (see the module docstring)."""
    grouping = grouping or Grouping()
    recorded = None if grouping.given else recorded_units(raw_dataset)
    if recorded is None:
        return units_from_grouping(cases, grouping)
    listed = sorted(case for _, unit_cases in recorded.values() for case in unit_cases)
    if listed != sorted(cases):
        raise InputError(
            f"the units recorded in {raw_dataset} and its labelsTr list different cases: "
            f"convert or derive the dataset again with --overwrite"
        )
    return with_strata(recorded, grouping)


def by_group(units: dict, exclude=()) -> dict:
    """Stratum -> sorted unit ids, leaving out ``exclude``."""
    groups: dict[str | None, list[str]] = {}
    for unit, (group, _) in sorted(units.items()):
        if unit not in exclude:
            groups.setdefault(group, []).append(unit)
    return groups


def stratified_draw(groups: dict, count: int, rng: np.random.Generator) -> list[str]:
    """``count`` units spread evenly across strata, the remainder from randomly chosen strata.

    With fewer units than strata that is one unit from each of ``count`` random strata. A stratum
    too small for its share leaves the shortfall to be drawn at random from all remaining units.
    """
    names = sorted(groups, key=str)
    share, remainder = divmod(count, len(names))
    extra = set(rng.choice(len(names), size=remainder, replace=False).tolist())
    chosen = []
    for index, group in enumerate(names):
        take = min(share + (index in extra), len(groups[group]))
        chosen += rng.choice(groups[group], size=take, replace=False).tolist()
    rest = [unit for group in names for unit in groups[group] if unit not in chosen]
    chosen += rng.choice(rest, size=count - len(chosen), replace=False).tolist()
    return sorted(chosen)


def draw_holdout(units: Units, count: int) -> list[str]:
    """The ``count`` units of a test set carved out of ``units``: stratified, with the fixed HOLDOUT_SEED.

    Why: without a test set of its own, a dataset's test set that no split, schedule or model choice ever
    touches has to be carved out before anything trains; a fixed seed makes it the same for everyone.
    """
    if not 0 < count < len(units):
        raise InputError(
            f"a holdout of {count} must leave at least one of the {len(units)} units to train on: "
            f"pick 1 to {len(units) - 1}"
        )
    return stratified_draw(by_group(units), count, np.random.default_rng(HOLDOUT_SEED))


def cases_of(units: dict, chosen) -> list[str]:
    return sorted(case for unit in chosen for case in units[unit][1])


def add_grouping_arguments(parser) -> None:
    parser.add_argument(
        "--group-pattern",
        metavar="REGEX",
        help="cases whose ids share this pattern's first group are one unit (one patient), e.g. '(patient\\d+)_' "
        "(default: as the dataset records it, else each case its own unit)",
    )
    parser.add_argument(
        "--group-map", type=Path, metavar="JSON", help="units from a JSON file: {case: unit} or {unit: [cases]}"
    )
    parser.add_argument(
        "--strata", type=Path, metavar="JSON", help="stratify every draw by a JSON file {unit: stratum}"
    )


def grouping_from_args(args) -> Grouping:
    if args.group_pattern is not None and args.group_map is not None:
        raise InputError("--group-pattern and --group-map both name the units: pass one of them")
    return Grouping(args.group_pattern, args.group_map, args.strata)
