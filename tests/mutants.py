"""Mutation check: would the tests notice if the code were wrong? Not part of the default suite.

    python tests/mutants.py [NAME_PART ...]

Copies the repository (without .git) to a temporary folder, runs every test named below there
unmutated (all must pass, none skipped: a mutant "caught" by a test that fails or skips anyway proves
nothing), then applies one mutant at a time (a small source change; its old text must occur exactly
once, so a mutant cannot silently stop applying), runs the tests meant to catch it with PYTHONPATH
and the working directory set to the copy, and restores the file. A mutant is caught when those tests
fail. The last line is ``caught N of M``; the exit status is 0 only when every mutant is caught.
NAME_PART limits the run to mutants whose name contains it.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import acdc_root  # noqa: E402  (tests/ is not a package)

RUN_LIMIT_S = 1800


@dataclass
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple


MUTANTS = [
    Mutant(
        "relative-position bias dropped in fast attention",
        "nnunet_autosam/model/encoders/fast_attention.py",
        "attn_mask=bias, scale",
        "attn_mask=None, scale",
        ("tests/test_fast_attention.py::test_fast_path_matches_segment_anything_forward",),
    ),
    Mutant(
        "SAM file hash left out of the cache key",
        "nnunet_autosam/training/embedding_cache/storage.py",
        '"checkpoint_sha256": identity.get("checkpoint_sha256"),',
        '"checkpoint_sha256": None,',
        ("tests/test_embedding_cache.py::test_cache_key_follows_the_encoder_identity",),
    ),
    Mutant(
        "cache labels shifted by one row",
        "nnunet_autosam/training/embedding_cache/storage.py",
        "return np.asarray(embeddings[row]), np.asarray(labels[row])",
        "return np.asarray(embeddings[row]), np.asarray(labels[row - 1])",
        (
            "tests/test_embedding_cache.py::"
            "test_views_are_nnunet_augmentations_seeded_per_slice_and_stored_beside_their_labels",
        ),
    ),
    Mutant(
        "cache --fold ignored (every case built)",
        "nnunet_autosam/training/embedding_cache/command.py",
        'cases = sorted(splits[args.fold]["train"])',
        "cases = sorted(cases)",
        (
            "tests/test_embedding_cache.py::test_training_reads_the_cache_the_command_built_and_builds_what_its_fold_lacks",
        ),
    ),
    Mutant(
        "mirroring forced on at prediction",
        "nnunet_autosam/training/trainer_base.py",
        'if os.environ.get(MIRROR_TTA_ENV, "0").lower() not in ("1", "true", "t"):',
        "if False:",
        ("tests/test_end_to_end.py::test_mirroring_at_prediction_is_off_by_default_and_on_with_the_variable",),
    ),
    Mutant(
        "AutoSAM head's class tokens shared across classes",
        "nnunet_autosam/model/heads/autosam.py",
        "tokens = self.class_tokens.weight.unsqueeze(0).expand(b, -1, -1)",
        "tokens = self.class_tokens.weight[:1].unsqueeze(0).expand(b, self.class_tokens.num_embeddings, -1)",
        ("tests/test_network.py::test_autosam_gives_each_class_its_own_token",),
    ),
    Mutant(
        "cached training steps never update the head",
        "nnunet_autosam/training/trainer_base.py",
        "        self.backward_and_step(loss, self.network.parameters())\n",
        "",
        ("tests/test_learning.py",),
    ),
    Mutant(
        "lean checkpoint's hash check skipped",
        "nnunet_autosam/model/network.py",
        'if not state.get("encoder_stored") and trained.get("checkpoint_sha256") != '
        'self.identity["checkpoint_sha256"]:',
        "if False:",
        ("tests/test_network.py::test_lean_state_dict_leaves_out_a_frozen_file_encoder_and_checks_its_hash",),
    ),
    Mutant(
        "checkpoint input size not checked against the plans",
        "nnunet_autosam/model/network.py",
        'for key in ("encoder_type", "input_size", "input_mapping", "channels"):',
        'for key in ("encoder_type", "input_mapping", "channels"):',
        ("tests/test_network.py::test_a_checkpoint_trained_at_another_input_size_is_refused",),
    ),
    Mutant(
        "embedding memo keyed without the tile",
        "nnunet_autosam/model/embedding_memo.py",
        "digest.update(tile.tobytes())",
        "digest.update(b'')",
        ("tests/test_embedding_memo.py::test_each_tile_is_stored_once_and_read_back_as_computed",),
    ),
    Mutant(
        "embedding memo keyed without the precision",
        "nnunet_autosam/model/embedding_memo.py",
        'digest.update(f"{embedding_precision(x.device)}|{tile.dtype}{tile.shape}".encode())',
        'digest.update(f"{tile.dtype}{tile.shape}".encode())',
        ("tests/test_precision.py::test_fp32_and_bf16_embeddings_never_share_a_cache_folder_or_memo_entry",),
    ),
    Mutant(
        "precision left out of the cache key",
        "nnunet_autosam/training/embedding_cache/storage.py",
        '"precision": precision,',
        '"precision": "fp32",',
        ("tests/test_precision.py::test_fp32_and_bf16_embeddings_never_share_a_cache_folder_or_memo_entry",),
    ),
    Mutant(
        "the heads' step runs in fp32 on a bf16 CPU",
        "nnunet_autosam/model/network.py",
        "with head_autocast(embedding.device, self.head):",
        'with torch.autocast("cpu", enabled=False):',
        ("tests/test_precision.py::test_on_runs_encoder_and_head_in_bf16_and_returns_fp32_logits",),
    ),
    Mutant(
        "AutoSAM's head runs in bf16 on a bf16 CPU",
        "nnunet_autosam/model/heads/autosam.py",
        "    cpu_bf16 = False\n",
        "",
        ("tests/test_precision.py::test_autosam_head_stays_fp32_on_a_bf16_cpu_also_inside_a_training_autocast",),
    ),
    Mutant(
        "the nnU-Net baseline's network left in fp32 on a bf16 CPU",
        "nnunet_autosam/utilities/precision.py",
        "    network.forward = forward_in_cpu_bf16\n",
        "",
        ("tests/test_precision.py::test_the_nnunet_network_wrapper_autocasts_on_cpu_only_and_keeps_stock_weights",),
    ),
    Mutant(
        "auto takes bf16 for the instructions alone",
        "nnunet_autosam/utilities/precision.py",
        "return cpu_has_bf16() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP",
        "return cpu_has_bf16()",
        ("tests/test_precision.py::test_auto_takes_bf16_only_where_the_probe_finds_it_faster",),
    ),
    Mutant(
        "the bf16 probe is timed anew in every process",
        "nnunet_autosam/utilities/precision.py",
        "            if key not in known:\n",
        "            if True:\n",
        ("tests/test_precision.py::test_the_probe_is_timed_once_per_machine_and_read_by_every_later_process",),
    ),
    Mutant(
        "the bf16 probe draws from the global random state",
        "nnunet_autosam/utilities/precision.py",
        "generator = torch.Generator().manual_seed(0)",
        "generator = torch.default_generator",
        ("tests/test_precision.py::test_the_probe_runs_inside_a_prediction_and_leaves_the_random_state_alone",),
    ),
    Mutant(
        "few-label comparison retrains a finished training",
        "nnunet_autosam/comparison/runs.py",
        "            if marker.is_file() and (not to_predict or final.is_file()):\n"
        "                return json.loads(marker.read_text())\n",
        "",
        ("tests/test_compare.py::test_a_rerun_does_nothing_twice_and_an_interrupted_run_restarts_cleanly",),
    ),
    Mutant(
        "few-label comparison predicts with a training whose checkpoint is gone",
        "nnunet_autosam/comparison/runs.py",
        "if marker.is_file() and (not to_predict or final.is_file()):",
        "if marker.is_file():",
        ("tests/test_compare.py::test_a_rerun_does_nothing_twice_and_an_interrupted_run_restarts_cleanly",),
    ),
    Mutant(
        "few-label comparison's plan costs what is left at another machine's speed",
        "nnunet_autosam/comparison/runs.py",
        "== (method, here, self.args.device)",
        "[:1] == (method,)",
        ("tests/test_compare.py::test_what_is_left_is_costed_at_this_machines_own_speed",),
    ),
    Mutant(
        "few-label comparison's plan counts a finished line as left",
        "nnunet_autosam/comparison/runs.py",
        "            if choice is not None and self.tested(line.method, fold, steps, prepared, variant):\n"
        "                continue\n",
        "",
        ("tests/test_compare.py::test_plan_lists_every_line_once_with_where_it_stands_and_trains_nothing",),
    ),
    Mutant(
        "few-label comparison predicts again a fold whose test predictions came without their model",
        "nnunet_autosam/comparison/runs.py",
        'return record["steps"] == steps and same_variant and predicted',
        'return record["steps"] == steps and same_variant and '
        "self.final_checkpoint(method, fold, steps, prepared).is_file()",
        ("tests/test_compare.py::test_a_rerun_does_nothing_twice_and_an_interrupted_run_restarts_cleanly",),
    ),
    Mutant(
        "few-label comparison counts a fold tested with a prediction missing",
        "nnunet_autosam/comparison/runs.py",
        "predicted = not missing_predictions(self.test_predictions(method, fold, prepared), cases)",
        "predicted = True",
        ("tests/test_compare.py::test_a_rerun_does_nothing_twice_and_an_interrupted_run_restarts_cleanly",),
    ),
    Mutant(
        "report drops test predictions whose model is gone",
        "nnunet_autosam/evaluation/report.py",
        "if fold not in trained and (source.test_pred_root is None or not pred_dir.is_dir()):",
        "if fold not in trained:",
        ("tests/test_report.py::test_test_predictions_count_without_their_model",),
    ),
    Mutant(
        "few-label comparison wipes an interrupted training that left a checkpoint",
        "nnunet_autosam/comparison/runs.py",
        "resume = resumable(fold_dir)",
        "resume = False",
        ("tests/test_compare.py::test_a_rerun_does_nothing_twice_and_an_interrupted_run_restarts_cleanly",),
    ),
    Mutant(
        "few-label comparison keeps a test record made at other steps",
        "nnunet_autosam/comparison/runs.py",
        'return record["steps"] == steps and same_variant and predicted',
        "return same_variant and predicted",
        ("tests/test_compare.py::test_a_rerun_does_nothing_twice_and_an_interrupted_run_restarts_cleanly",),
    ),
    Mutant(
        "ladder takes 2S when doubling the steps added too little",
        "nnunet_autosam/comparison/ladder.py",
        "return Choice(lower, True)",
        "return Choice(upper, True)",
        ("tests/test_compare_protocol.py::test_the_ladder_stops_where_doubling_the_steps_adds_less_than_the_plateau",),
    ),
    Mutant(
        "ladder stops at the first rung",
        "nnunet_autosam/comparison/ladder.py",
        "            if lower not in dice or upper not in dice:\n                return None\n",
        "            if lower not in dice or upper not in dice:\n                return Choice(lower, False)\n",
        ("tests/test_compare_protocol.py::test_the_ladder_stops_where_doubling_the_steps_adds_less_than_the_plateau",),
    ),
    Mutant(
        "test run trained at the top rung, not the chosen steps",
        "nnunet_autosam/comparison/runs.py",
        "training = self.train(method, fold, choice.steps, prepared, to_predict=True, variant=variant)",
        "training = self.train(method, fold, self.ladder.rungs_for(method)[-1], prepared, to_predict=True, "
        "variant=variant)",
        (
            "tests/test_compare.py::"
            "test_seed_zero_climbs_the_ladder_and_the_test_run_uses_the_steps_its_validation_chose",
        ),
    ),
    Mutant(
        "shards run their dearest lines first",
        "nnunet_autosam/comparison/protocol.py",
        "return [sorted(share, key=lambda item: (cost(item), item.name)) for share in assigned]",
        "return [sorted(share, key=lambda item: (-cost(item), item.name)) for share in assigned]",
        ("tests/test_compare_protocol.py::test_shards_split_the_lines_without_overlap_and_by_cost_cheapest_first",),
    ),
    Mutant(
        "group pattern ignored (each case its own unit)",
        "nnunet_autosam/data/grouping.py",
        "found[case] = match.group(1) if pattern.groups else match.group(0)",
        "found[case] = case",
        ("tests/test_holdout.py::test_a_pattern_or_a_map_groups_cases_into_units",),
    ),
    Mutant(
        "held-out units copied into imagesTr as well",
        "nnunet_autosam/comparison/holdout.py",
        'suffix = "Ts" if unit in held_out else "Tr"',
        'suffix = "Tr"',
        ("tests/test_holdout.py::test_holdout_moves_whole_units_to_the_test_set_and_leaves_the_source_alone",),
    ),
    Mutant(
        "derived holdout drawn without the strata",
        "nnunet_autosam/data/grouping.py",
        "return stratified_draw(by_group(units), count, np.random.default_rng(HOLDOUT_SEED))",
        "return stratified_draw({None: sorted(units)}, count, np.random.default_rng(HOLDOUT_SEED))",
        ("tests/test_holdout.py::test_strata_spread_the_test_set_over_them",),
    ),
    Mutant(
        "channel strategy left out of the cache key",
        "nnunet_autosam/training/embedding_cache/storage.py",
        '"channels": identity["channels"],',
        "",
        ("tests/test_network.py::test_cache_and_memo_keys_change_with_the_channel_strategy",),
    ),
    Mutant(
        "stacked channels: every colour from the first image channel",
        "nnunet_autosam/model/channel_input.py",
        'return torch.einsum("kc,bckhw->bkhw", self.mix, mapped)',
        "return mapped[:, 0]",
        ("tests/test_network.py::test_stacked_channels_fill_r_g_b_each_through_the_family_mapping",),
    ),
    Mutant(
        "separate channels fused as their sum instead of their mean at the start",
        "nnunet_autosam/model/channel_input.py",
        "[:, :, None, None] / num_channels)",
        "[:, :, None, None])",
        (
            "tests/test_network.py::test_separate_channels_embed_each_channel_alone_and_fuse_them_as_their_mean_at_first",
        ),
    ),
    Mutant(
        "neighbours wrap around at the edges instead of replicating the edge slice",
        "nnunet_autosam/data/neighbours.py",
        "np.clip(slices + offset, 0, slices[-1])",
        "(slices + offset) % len(slices)",
        ("tests/test_neighbours.py::test_each_channel_holds_the_neighbouring_slices_and_labels_are_unchanged",),
    ),
    Mutant(
        "neighbours' axis from SimpleITK's spacing order (x, y, z) taken as the array's (z, y, x)",
        "nnunet_autosam/data/neighbours.py",
        "spacings.append(header.GetSpacing()[::-1])",
        "spacings.append(header.GetSpacing())",
        ("tests/test_neighbours.py::test_each_channel_holds_the_neighbouring_slices_and_labels_are_unchanged",),
    ),
    Mutant(
        "neighbours' axis from the plans' last transposed axis",
        "nnunet_autosam/data/neighbours.py",
        "axis = int(transpose_forward[0])",
        "axis = int(transpose_forward[-1])",
        ("tests/test_neighbours.py::test_the_axis_comes_from_the_plans_when_the_source_is_planned",),
    ),
    Mutant(
        "evaluation's HD95 computed in voxels instead of mm",
        "nnunet_autosam/evaluation/metrics.py",
        "float(hd95(pred_mask, ref_mask, voxelspacing=spacing))",
        "float(hd95(pred_mask, ref_mask))",
        ("tests/test_evaluation.py::test_shift_by_one_slice_along_z",),
    ),
    Mutant(
        "validation cases pseudo-labelled as unlabelled",
        "nnunet_autosam/training/pseudo_labels.py",
        "in_fold = set(labelled) | set(validation)",
        "in_fold = set(labelled)",
        ("tests/test_pseudo_labels.py::test_the_student_learns_from_the_teachers_labels_of_the_unlabelled_cases_only",),
    ),
    Mutant(
        "labelled cases not weighted up in the student's fold",
        "nnunet_autosam/training/pseudo_labels.py",
        'training = record["labelled"] * record["labelled_weight"] + record["unlabelled"]',
        'training = record["labelled"] + record["unlabelled"]',
        ("tests/test_pseudo_labels.py::test_the_student_learns_from_the_teachers_labels_of_the_unlabelled_cases_only",),
    ),
    Mutant(
        "doubtful voxels keep the teacher's label",
        "nnunet_autosam/training/pseudo_labels.py",
        "probabilities.max(axis=0) < min_confidence",
        "probabilities.max(axis=0) < 0",
        ("tests/test_pseudo_labels.py::test_the_student_learns_from_the_teachers_labels_of_the_unlabelled_cases_only",),
    ),
    Mutant(
        "the seed leaves the cache's batches unseeded",
        "nnunet_autosam/training/trainer_base.py",
        "    np.random.seed(seed)\n",
        "",
        ("tests/test_end_to_end.py::test_a_seeded_training_repeats_bit_for_bit_and_another_seed_does_not",),
    ),
]


def copy_repository(target: Path) -> Path:
    shutil.copytree(
        REPO, target, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".venv", ".pytest_cache")
    )
    return target


def pytest_run(copy: Path, tests) -> subprocess.CompletedProcess:
    # No bytecode: a mutated and a restored file may share size and mtime, and a stale .pyc would be reused.
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1", NNUNET_AUTOSAM_ACDC=str(acdc_root()))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rfEs", *tests],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_S,
    )


def failed_tests(result: subprocess.CompletedProcess) -> list:
    return re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, flags=re.MULTILINE)


def check_copy_is_imported(copy: Path) -> None:
    """The copy's package, not an installed one, must be what the tests import."""
    env = dict(os.environ, PYTHONPATH=str(copy))
    found = subprocess.run(
        [sys.executable, "-c", "import nnunet_autosam.run.doctor as d; print(d.__file__); print(d.trainer_dir())"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    )
    lines = found.stdout.split()
    if found.returncode != 0 or not all(line.startswith(str(copy)) for line in lines):
        sys.exit(f"the copy's package is not the one imported: {found.stdout}{found.stderr}")


def apply(copy: Path, mutant: Mutant) -> str:
    path = copy / mutant.file
    original = path.read_text()
    if original.count(mutant.old) != 1:
        sys.exit(
            f"mutant {mutant.name!r}: its old text occurs {original.count(mutant.old)} times in {mutant.file}, "
            f"not once: update the mutant"
        )
    path.write_text(original.replace(mutant.old, mutant.new))
    return original


def main(name_parts) -> int:
    mutants = [m for m in MUTANTS if not name_parts or any(part in m.name for part in name_parts)]
    with tempfile.TemporaryDirectory(prefix="nnunet_autosam_mutants_") as folder:
        copy = copy_repository(Path(folder) / "repo")
        check_copy_is_imported(copy)
        for mutant in mutants:  # every mutant applies before any test runs
            (copy / mutant.file).write_text(apply(copy, mutant))
        tests = list(dict.fromkeys(test for mutant in mutants for test in mutant.tests))
        baseline = pytest_run(copy, tests)
        if baseline.returncode != 0 or re.search(r"\bskipped\b", baseline.stdout.splitlines()[-1]):
            print(baseline.stdout[-4000:], baseline.stderr[-2000:])
            print("the unmutated tests do not all pass: fix them first")
            return 2
        print(f"baseline: {baseline.stdout.strip().splitlines()[-1]}", flush=True)
        caught = []
        for mutant in mutants:
            original = apply(copy, mutant)
            try:
                result = pytest_run(copy, mutant.tests)
            finally:
                (copy / mutant.file).write_text(original)
            failed = failed_tests(result)
            if result.returncode == 1 and failed:
                caught.append(mutant)
                print(f"caught  {mutant.name}: {failed[0]}", flush=True)
            else:
                print(
                    f"MISSED  {mutant.name}: pytest exit {result.returncode}, "
                    f"{result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-300:]}",
                    flush=True,
                )
    print(f"caught {len(caught)} of {len(mutants)}")
    return 0 if len(caught) == len(mutants) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
