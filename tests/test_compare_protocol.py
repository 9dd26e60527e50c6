"""The comparison's protocol without training: every head in the method table, shards balanced by cost and
ordered cheap first, the claims the published table checks, and the commands it prepares a dataset with."""

from types import SimpleNamespace

import pytest

from nnunet_autosam import cli
from nnunet_autosam.comparison import protocol
from nnunet_autosam.comparison.publish import claims
from nnunet_autosam.comparison.runs import Experiment
from nnunet_autosam.data.synthetic import write_synthetic_raw_dataset
from nnunet_autosam.model.heads import HEADS
from nnunet_autosam.utilities.commands import FULL_FT_TRAINER, STOCK_PLANS, Workspace


def test_the_method_table_has_nnunet_every_registered_head_and_ft_all():
    trainers = {method.trainer for method in protocol.METHODS.values()}
    assert {spec.trainer for spec in HEADS.values()} | {FULL_FT_TRAINER, "nnUNetTrainerEnvSchedule"} <= trainers
    assert set(protocol.DEFAULT_METHODS) <= {*protocol.METHODS, protocol.ZERO_SHOT}


def test_shards_split_the_runs_without_overlap_and_by_cost():
    schedule = protocol.SCHEDULES["cpu"]
    runs = [protocol.Run(method, fold) for method in ("nnunet", "autosam", "linear") for fold in range(6)]
    runs += [protocol.Run(method, fold) for method in ("cnn", "ftall") for fold in (0, 3)]
    runs += [protocol.Run(protocol.ZERO_SHOT)]
    shares = [protocol.shard(runs, schedule, f"{index}/3") for index in range(3)]
    names = [run.name for share in shares for run in share]
    assert sorted(names) == sorted(run.name for run in runs) and len(set(names)) == len(names)
    costs = [sum(run.cost(schedule) for run in share) for share in shares]
    assert max(costs) < 1.5 * min(costs)
    for share in shares:  # cheap runs first: no run over half an hour before a cheaper one; then cheapest first
        is_long = [run.cost(schedule) > protocol.LONG_RUN_S for run in share]
        assert is_long == sorted(is_long)
        long_costs = [run.cost(schedule) for run in share if run.cost(schedule) > protocol.LONG_RUN_S]
        assert long_costs == sorted(long_costs)
    whole = protocol.shard(runs, schedule, "0/1")
    assert [run.name for run in whole[-4:]] == ["cnn_fold0", "cnn_fold3", "ftall_fold0", "ftall_fold3"]


def test_one_seed_methods_run_on_seed_zero_only():
    folds = [{"fold": index, "seed": index % 3} for index in range(6)]
    runs = protocol.all_runs(["linear", "cnn", protocol.ZERO_SHOT], folds, protocol.SCHEDULES["cpu"])
    assert [run.name for run in runs] == [f"linear_fold{n}" for n in range(6)] + ["cnn_fold0", "cnn_fold3", "zero_shot"]


@pytest.mark.parametrize(
    "autosam, nnunet, verdicts",
    [
        ("37.7", "3.9", ("**fails** (37.7 over 3 of 3 seeds)", "holds (37.7 against 3.9)")),
        ("39.0", "45.2", ("holds (39.0 over 3 of 3 seeds)", "**fails** (39.0 against 45.2)")),
    ],
)
def test_the_table_says_whether_each_claim_holds(tmp_path, autosam, nnunet, verdicts):
    args = SimpleNamespace(budgets=[1, 5], seeds=3, claim_min_dice=39.0)
    report = tmp_path / "report.csv"
    rows = [
        ("1", "nnUNetTrainerEnvSchedule__nnUNetPlans_batch4__2d", nnunet),
        ("1", "AutoSAMTrainer__nnUNetPlans_SAM_lite_medsam_256__2d", autosam),
        ("5", "AutoSAMTrainer__nnUNetPlans_SAM_lite_medsam_256__2d", "70.9"),
    ]
    report.write_text("budget,folder,n_seeds,mean_Dice_mean\n" + "".join(f"{b},{f},3,{d}\n" for b, f, d in rows))
    lines = claims(args, report).splitlines()
    assert lines[0] == "## Claims at 1 labelled patient, as measured"
    assert lines[2].endswith(f"at least 39: {verdicts[0]}") and lines[3].endswith(verdicts[1])
    without_bar = SimpleNamespace(**{**vars(args), "claim_min_dice": None})
    assert claims(without_bar, report).splitlines()[2:] == [lines[3], ""]
    report.write_text("budget,folder,n_seeds,mean_Dice_mean\n" + "".join(f"{b},{f},3,{d}\n" for b, f, d in rows[1:]))
    assert "Not measured" in claims(args, report)


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


def test_channels_reach_the_sam_plans_only_when_asked(tmp_path, monkeypatch):
    commands = prepared_commands(tmp_path / "separate", monkeypatch, "--channels", "separate")
    (plans,) = [line for line in commands if line.startswith("nnunet-autosam plans")]
    assert plans == "nnunet-autosam plans 902 --encoder tiny --embedding-cache cache --channels separate --batch-size 4"
    default = prepared_commands(tmp_path / "default", monkeypatch)
    assert [line for line in default if line.startswith("nnunet-autosam plans")] == [
        plans.replace(" --channels separate", "")
    ]
