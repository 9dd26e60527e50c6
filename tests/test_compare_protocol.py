"""The comparison's protocol without training: every head in the method table, the schedule ladder's choice,
shards of lines balanced by cost and ordered cheap first, the claims the published table checks, and the commands
it prepares a dataset with."""

import json
from types import SimpleNamespace

import pytest

from nnunet_autosam import cli
from nnunet_autosam.comparison import protocol
from nnunet_autosam.comparison.ladder import Choice, Ladder, parse_method_steps
from nnunet_autosam.comparison.publish import claims, pseudo_dice_per_epoch
from nnunet_autosam.comparison.runs import Experiment
from nnunet_autosam.data.synthetic import write_synthetic_raw_dataset
from nnunet_autosam.model.heads import HEADS
from nnunet_autosam.utilities.commands import FULL_FT_TRAINER, STOCK_PLANS, Workspace
from nnunet_autosam.utilities.errors import InputError


def test_the_method_table_has_nnunet_every_registered_head_and_ft_all():
    trainers = {method.trainer for method in protocol.METHODS.values()}
    assert {spec.trainer for spec in HEADS.values()} | {FULL_FT_TRAINER, "nnUNetTrainerEnvSchedule"} <= trainers
    assert set(protocol.DEFAULT_METHODS) <= {*protocol.METHODS, protocol.ZERO_SHOT}


def test_shards_split_the_lines_without_overlap_and_by_cost_cheapest_first():
    schedule = protocol.SCHEDULES["cpu"]
    rungs = schedule.rungs
    lines = protocol.all_lines(["nnunet", "autosam", "linear", "cnn", "ftall", protocol.ZERO_SHOT], [1, 5])
    assert [line.name for line in lines if line.method == protocol.ZERO_SHOT] == [protocol.ZERO_SHOT]

    def cost(line):
        return line.cost(schedule, rungs, 3)

    shares = [protocol.shard(lines, cost, f"{index}/3") for index in range(3)]
    names = [line.name for share in shares for line in share]
    assert sorted(names) == sorted(line.name for line in lines) and len(set(names)) == len(names)
    for share in shares:
        assert [cost(line) for line in share] == sorted(cost(line) for line in share)
    whole = protocol.shard(lines, cost, "0/1")
    assert whole[-1].method == "cnn"  # the dearest: every rung and three seeds at 10 s a step


def test_a_line_costs_every_rung_on_seed_zero_and_the_top_on_the_others():
    schedule = protocol.SCHEDULES["cpu"]
    nnunet = protocol.METHODS["nnunet"]
    cost = protocol.Line("nnunet", 5).cost(schedule, (250, 500), 3)
    assert cost == pytest.approx(nnunet.cpu_step_s * (750 + 2 * 500) + nnunet.cpu_run_s * 4)
    ftall = protocol.METHODS["ftall"]
    one_seed = protocol.Line("ftall", 1).cost(schedule, (250,), 3)
    assert one_seed == pytest.approx(ftall.cpu_step_s * 250 + ftall.cpu_run_s)


@pytest.mark.parametrize(
    "dice, choice",
    [
        ({250: 10.0}, None),
        ({250: 10.0, 500: 11.9}, Choice(250, True)),
        ({250: 10.0, 500: 40.0}, None),
        ({250: 10.0, 500: 40.0, 1000: 30.0}, Choice(500, True)),  # 2S worse than S: S is enough
        ({250: 10.0, 500: 40.0, 1000: 50.0}, Choice(1000, False)),  # the top rung, no plateau shown
    ],
)
def test_the_ladder_stops_where_doubling_the_steps_adds_less_than_the_plateau(dice, choice):
    ladder = Ladder((250, 500, 1000), plateau_points=2.0)
    assert ladder.choice("nnunet", dice) == choice
    following = [steps for steps in (250, 500, 1000) if steps not in dice]
    assert ladder.next_rung("nnunet", dice) == (following[0] if choice is None else None)


def test_a_cap_ends_one_methods_ladder_and_bad_ladders_are_refused():
    ladder = Ladder((250, 500, 1000), caps=parse_method_steps(["ftall=500"], "cap"))
    assert ladder.rungs_for("ftall") == (250, 500) and ladder.rungs_for("nnunet") == (250, 500, 1000)
    assert ladder.choice("ftall", {250: 10.0, 500: 30.0}) == Choice(500, False)
    with pytest.raises(InputError, match="not a doubling ladder"):
        Ladder((250, 600))
    with pytest.raises(InputError, match="not a rung of the ladder"):
        Ladder((250, 500), caps={"ftall": 300})
    with pytest.raises(InputError, match="not METHOD=STEPS"):
        parse_method_steps(["ftall:500"], "cap")
    with pytest.raises(InputError, match="not a whole number of epochs"):
        protocol.SCHEDULES["cpu"].environment(260)


def test_a_start_skips_one_methods_lower_rungs_and_is_chosen_from_the_rungs_it_trained():
    ladder = Ladder((250, 500, 1000, 2000), starts=parse_method_steps(["nnunet=500"], "start"), caps={"ftall": 500})
    assert ladder.rungs_for("nnunet") == (500, 1000, 2000) and ladder.rungs_for("linear") == (250, 500, 1000, 2000)
    assert ladder.next_rung("nnunet", {}) == 500
    assert ladder.choice("nnunet", {500: 40.0, 1000: 41.0}) == Choice(500, True)
    with pytest.raises(InputError, match="not a rung of the ladder"):
        Ladder((250, 500), starts={"nnunet": 300})
    with pytest.raises(InputError, match="above --cap ftall=500"):
        Ladder((250, 500, 1000), caps={"ftall": 500}, starts={"ftall": 1000})


def test_one_seed_methods_run_on_seed_zero_only():
    lines = protocol.all_lines(["linear", "ftall"], [1])
    schedule = protocol.SCHEDULES["cpu"]
    assert schedule.one_seed_methods == ("ftall",)
    step_s = {line.method: protocol.METHODS[line.method].cpu_step_s for line in lines}
    run_s = {line.method: protocol.METHODS[line.method].cpu_run_s for line in lines}
    for line in lines:
        seeds = 1 if line.method == "ftall" else 3
        expected = step_s[line.method] * (250 + (seeds - 1) * 250) + run_s[line.method] * seeds
        assert line.cost(schedule, (250,), 3) == pytest.approx(expected)


def write_report(folder, rows, folds_dice):
    """A report folder as `nnunet-autosam report` writes it: report.csv and one summary per scored fold."""
    (folder / "summaries").mkdir(parents=True)
    header = "budget,folder,n_seeds,mean_Dice_mean\n"
    (folder / "report.csv").write_text(header + "".join(f"{b},{f},{n},{d}\n" for b, f, n, d in rows))
    for (name, fold), dice in folds_dice.items():
        (folder / "summaries" / f"{name}__fold_{fold}.json").write_text(
            json.dumps({"foreground_mean": {"Dice": dice / 100}})
        )


NNUNET = "nnUNetTrainerEnvSchedule__nnUNetPlans_batch4__2d"
AUTOSAM = "AutoSAMTrainer__nnUNetPlans_SAM_lite_medsam_256__2d"
LINEAR = "SAMLinearTrainer__nnUNetPlans_SAM_lite_medsam_256__2d"


def test_a_resumed_trainings_curve_takes_the_repeated_epochs_from_its_later_log(tmp_path):
    """nnU-Net names its logs without zero-padding (day 9 after day 10 by name): they are read in time order."""

    def log(name: str, epochs: dict) -> None:
        lines = [f"2026-12-09 23:00:00: Epoch {e} \n2026-12-09 23:00:01: Pseudo dice {d}" for e, d in epochs.items()]
        (tmp_path / name).write_text("\n".join(lines) + "\n")

    log("training_log_2026_12_9_23_51_15.txt", {9: "[0.1, 0.3]", 10: "[np.float32(0.2), np.float32(0.4)]"})
    log("training_log_2026_12_10_0_55_21.txt", {10: "[0.5, 0.7]", 11: "[0.6, nan]"})
    assert pseudo_dice_per_epoch(tmp_path.glob("training_log_*.txt")) == pytest.approx({9: 0.2, 10: 0.6, 11: 0.6})


def test_the_table_says_at_each_budget_whether_the_best_sam_method_beats_nnunet_and_in_how_many_seeds(tmp_path):
    args = SimpleNamespace(budgets=[1, 5], seeds=3, claim_min_dice=39.0)
    folds = [{"fold": 3 * b + s, "budget": budget, "seed": s} for b, budget in enumerate((1, 5)) for s in range(3)]
    folders = {"nnunet": NNUNET, "autosam": AUTOSAM, "linear": LINEAR}
    per_fold = {(NNUNET, 0): 10.0, (NNUNET, 1): 50.0, (NNUNET, 2): 20.0, (AUTOSAM, 0): 40.0, (AUTOSAM, 1): 30.0}
    per_fold |= {(AUTOSAM, 2): 41.0, (NNUNET, 3): 80.0, (AUTOSAM, 3): 70.0, (LINEAR, 3): 75.0}
    rows = [("1", NNUNET, 3, 26.7), ("1", AUTOSAM, 3, 37.0), ("1", LINEAR, 3, 20.0)]
    rows += [("5", NNUNET, 1, 80.0), ("5", AUTOSAM, 1, 70.0), ("5", LINEAR, 1, 75.0)]
    write_report(tmp_path, rows, per_fold)
    lines = claims(args, tmp_path, folds, folders).splitlines()
    assert lines[0] == "## Claims, as measured"
    assert lines[2] == (
        "- 1 labelled patient: the best trained SAM method (autosam, 37.0 over 3 seeds) is above nnU-Net "
        "(26.7 over 3 seeds): holds; above it in 2 of 3 paired seeds"
    )
    assert lines[3].endswith("is at least 39: **fails** (37.0 over 3 of 3 seeds)")
    assert lines[4] == (
        "- 5 labelled patients: the best trained SAM method (linear, 75.0 over 1 seeds) is above nnU-Net "
        "(80.0 over 1 seeds): **fails**; above it in 0 of 1 paired seeds"
    )
    without_nnunet = tmp_path / "without"
    write_report(without_nnunet, rows[1:3], {})
    assert "1 labelled patient: not measured" in claims(args, without_nnunet, folds, folders)


def prepared_commands(tmp_path, monkeypatch, *options) -> list:
    """The commands compare's preparation logs for a 2-channel dataset, none of them run (commands.log)."""
    source = write_synthetic_raw_dataset(
        tmp_path / "raw", num_patients=3, cases_per_patient=1, shape=(2, 8, 12), num_channels=2
    )
    output = tmp_path / "out"
    monkeypatch.setattr(Workspace, "run", lambda self, *command: "nnUNetPlans_SAM_tiny_64\n")
    monkeypatch.setattr(Experiment, "stock_plans", lambda self, batch_size: STOCK_PLANS)
    smoke = ["--holdout", "1", "--encoder", "tiny", "--val-patients", "1", "--budgets", "1", "--seeds", "1"]
    Experiment(
        cli.build_parser().parse_args(["compare", str(source), "--output", str(output), *smoke, *options])
    ).prepare()
    return (output / "commands.log").read_text().splitlines()


def test_budgets_the_output_folder_has_no_folds_for_are_refused_in_one_line(tmp_path, monkeypatch):
    prepared_commands(tmp_path, monkeypatch)  # prepared for budget 1, seed 0
    output = tmp_path / "out"
    preprocessed = output / "nnUNet_preprocessed" / "Dataset902_Synthetic"
    preprocessed.mkdir(parents=True)
    (output / "nnUNet_raw" / "Dataset902_Synthetic").mkdir(parents=True)
    folds = [{"fold": 0, "budget": 1, "seed": 0, "train_cases": ["a"], "val_cases": ["b"]}]
    (preprocessed / "few_label_splits.json").write_text(json.dumps({"folds": folds}))

    def prepare(*options):
        smoke = ["--holdout", "1", "--encoder", "tiny", "--val-patients", "1", *options]
        return Experiment(cli.build_parser().parse_args(["compare", "902", "--output", str(output), *smoke])).prepare()

    assert prepare("--budgets", "1", "--seeds", "1")["dataset"]
    with pytest.raises(InputError, match=r"holds folds for budgets 1 \(1 seeds\), not for --budgets 5 at --seeds 1"):
        prepare("--budgets", "1", "5", "--seeds", "1")
    with pytest.raises(InputError, match="not for --budgets 1 at --seeds 3: ask for what it holds"):
        prepare("--budgets", "1", "--seeds", "3")


def test_channels_reach_the_sam_plans_only_when_asked(tmp_path, monkeypatch):
    commands = prepared_commands(tmp_path / "separate", monkeypatch, "--channels", "separate")
    (plans,) = [line for line in commands if line.startswith("nnunet-autosam plans")]
    assert plans == (
        "nnunet-autosam plans 902 --encoder tiny --embedding-cache cache_views:8 --channels separate --batch-size 4"
    )
    default = prepared_commands(tmp_path / "default", monkeypatch)
    assert [line for line in default if line.startswith("nnunet-autosam plans")] == [
        plans.replace(" --channels separate", "")
    ]


@pytest.mark.parametrize(
    "text, key",
    [("autosam:0.8:10", "pseudo_autosam_c0p8_w10"), ("autosam+nnunet:0:1", "pseudo_autosam_nnunet_c0_w1")],
)
def test_a_pseudo_label_variant_reads_back_as_written_and_names_its_records_plainly(text, key):
    variant = protocol.PseudoVariant.parse(text)
    assert (variant.text, variant.key) == (text, key)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("autosam:0.8", "write e.g. autosam:0.8:10"),
        ("pseudo:0.8:1", "teacher 'pseudo' is not a trained method"),
        ("unet:0.8:1", "teacher 'unet' is not a trained method"),
        ("autosam:high:1", "the confidence as a number"),
        ("autosam:1:1", r"must lie in \[0, 1\)"),
        ("autosam:0.5:0", "be at least 1"),
    ],
)
def test_a_bad_pseudo_label_variant_is_refused_with_the_fix(text, problem):
    with pytest.raises(InputError, match=problem):
        protocol.PseudoVariant.parse(text)


def test_the_student_costs_its_other_variants_at_the_lowest_rung_and_a_dataset_per_student():
    schedule, method = protocol.SCHEDULES["cpu"], protocol.METHODS[protocol.PSEUDO]
    cost = protocol.Line(protocol.PSEUDO, 1).cost(schedule, (250, 500), 3, variants=3)
    steps, runs, students = 750 + 2 * 500 + 2 * 250, 2 + 2 + 2, 3 + 2
    assert cost == pytest.approx(method.cpu_step_s * steps + method.cpu_run_s * runs + students * 900.0)
    nnunet = protocol.Line("nnunet", 1)
    assert nnunet.cost(schedule, (250, 500), 3, variants=3) == nnunet.cost(schedule, (250, 500), 3)


def test_a_student_without_its_teacher_among_the_methods_is_refused(tmp_path):
    options = ["compare", "402", "--output", str(tmp_path), "--methods", "nnunet", "pseudo"]
    with pytest.raises(InputError, match="teacher autosam is not among --methods: add it"):
        Experiment(cli.build_parser().parse_args([*options, "--pseudo-variants", "autosam:0.8:1"]))
    assert not any(tmp_path.iterdir())  # refused before anything was written


PSEUDO = "nnUNetTrainerPseudoLabelStudent__nnUNetPlans_batch4__2d"


def test_the_table_says_whether_the_student_beats_nnunet_and_its_teacher(tmp_path):
    args = SimpleNamespace(budgets=[1, 5], seeds=1, claim_min_dice=39.0)
    folds = [{"fold": 0, "budget": 1, "seed": 0}, {"fold": 1, "budget": 5, "seed": 0}]
    folders = {"nnunet": NNUNET, "autosam": AUTOSAM, protocol.PSEUDO: PSEUDO}
    rows = [("1", NNUNET, 1, 30.0), ("1", AUTOSAM, 1, 40.0), ("1", PSEUDO, 1, 45.0)]
    rows += [("5", NNUNET, 1, 80.0), ("5", PSEUDO, 1, 70.0)]
    per_fold = {(NNUNET, 0): 30.0, (AUTOSAM, 0): 40.0, (NNUNET, 1): 80.0}
    write_report(tmp_path, rows, per_fold)
    variants = {1: protocol.PseudoVariant.parse("autosam:0.8:10"), 5: protocol.PseudoVariant.parse("autosam:0:1")}
    lines = claims(args, tmp_path, folds, folders, variants).splitlines()
    assert lines[2] == (
        "- 1 labelled patient: nnU-Net + SAM pseudo-labels (autosam:0.8:10; it learns from the fold's unlabelled "
        "units too, 45.0 over 1 seeds) is above labelled-only nnU-Net (30.0 over 1 seeds): holds; above its "
        "teacher autosam (40.0 over 1 seeds): holds"
    )
    (five,) = [line for line in lines if line.startswith("- 5 labelled patients: nnU-Net + SAM")]
    assert five.endswith(
        "above labelled-only nnU-Net (80.0 over 1 seeds): **fails**; above its teacher autosam: not measured"
    )
    assert "pseudo-labels" not in claims(args, tmp_path, folds, folders)  # no variant chosen: no student claim
