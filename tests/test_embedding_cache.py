"""The embedding cache: same numbers as on the fly, keyed and checked, resumable and shardable, and trainable.

Runs on 3 real ACDC patients (6 cases), planned with the stock nnUNetv2_plan_and_preprocess, with the
file-less `tiny` encoder at 128 (and tiny SAM files for the checkpoint-identity checks).
"""

import copy
import json
import re
import shutil
import time

import numpy as np
import pytest
import torch
from conftest import acdc_root
from sam_files import write_sam_checkpoint

from nnunet_autosam.experiment_planning import settings
from nnunet_autosam.training.embedding_cache import command as ec
from nnunet_autosam.utilities.commands import Workspace
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.shards import shard_cases

PATIENTS = ["patient001", "patient021", "patient041"]
PLANS = "nnUNetPlans_SAM_tiny_128"
DATASET = "Dataset027_ACDC"
SHORT_SCHEDULE = {"AUTOSAM_NUM_EPOCHS": "1", "AUTOSAM_ITERS_PER_EPOCH": "3", "AUTOSAM_VAL_ITERS_PER_EPOCH": "1"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    source = acdc_root()
    if not all((source / "training" / patient).is_dir() for patient in PATIENTS):
        pytest.skip(f"ACDC data not found at {source} (set NNUNET_AUTOSAM_ACDC to the folder holding training/)")
    root = tmp_path_factory.mktemp("cache")
    weights = root / "weights"
    weights.mkdir()
    # One torch thread in the subprocesses: on this project's shared 2-core machines two threads ran the tiny
    # encoder ~25x slower than one (threads spinning against other load).
    ws = Workspace(root, SHORT_SCHEDULE, {"nnUNet_SAM_weights": str(weights), "OMP_NUM_THREADS": "1"})
    started = time.perf_counter()
    plans = ws.prepare(
        source, ["--patients", *PATIENTS], ["--encoder", "tiny", "--input-size", "128", "--batch-size", "2"]
    )
    assert plans == PLANS
    # Other encoder identities on the same preprocessed data: another input size, two different SAM files.
    ws.plugin("plans", "27", "--encoder", "tiny", "--input-size", "64", "--batch-size", "2")
    state = write_sam_checkpoint(weights / "tiny_a.pth", "tiny")
    other = torch.load(state, weights_only=True)
    other["image_encoder.patch_embed.proj.bias"] += 0.5
    torch.save(other, weights / "tiny_b.pth")
    for name in ("a", "b"):
        ws.plugin(
            "plans",
            "27",
            "--encoder",
            "tiny",
            "--input-size",
            "128",
            "--batch-size",
            "2",
            "--checkpoint",
            f"tiny_{name}.pth",
            "--plans-name",
            f"nnUNetPlans_SAM_tiny_{name}_128",
        )
    print(f"prepared in {time.perf_counter() - started:.1f} s")
    return ws


@pytest.fixture
def in_process(workspace, monkeypatch):
    """The workspace's nnU-Net folders in this process's environment, no cache mode set."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_SAM_weights"):
        monkeypatch.setenv(name, workspace.env[name])
    monkeypatch.delenv(settings.CACHE_ENV, raising=False)
    return workspace


def centre_crop(image, size, fill):
    """``image`` placed on a ``size`` canvas, centres aligned as nnU-Net's centre crop does (odd pixel at the end)."""
    out = np.full(size, fill, dtype=image.dtype)
    rows, cols = [np.arange(p) + (s - p) // 2 for s, p in zip(image.shape, size)]
    keep_rows, keep_cols = (rows >= 0) & (rows < image.shape[0]), (cols >= 0) & (cols < image.shape[1])
    out[np.ix_(keep_rows, keep_cols)] = image[np.ix_(rows[keep_rows], cols[keep_cols])]
    return out


def fresh_cache(plans=PLANS, mode="cache"):
    cache, network, cases = ec.cache_for_plans("27", plans, "2d", settings.parse_mode(mode))
    shutil.rmtree(cache.folder, ignore_errors=True)
    return cache, network, cases


@pytest.mark.slow
def test_cached_embeddings_equal_the_encoder_on_the_same_patch(in_process):
    cache, network, cases = fresh_cache()
    started = time.perf_counter()
    report = cache.ensure(cases, network)
    print(f"built {report.samples_built} slices of {len(cases)} cases in {time.perf_counter() - started:.2f} s")
    assert report.built == cases and not report.reused
    samples = cache.open(cases)
    slices = sum(cache.dataset.load_case(case)[0].shape[1] for case in cases)
    assert len(samples) == slices == report.samples_built

    for index, case in enumerate(cases[:3]):
        data, seg, _, _ = cache.dataset.load_case(case)
        for z in (0, data.shape[1] // 2):
            # The patch made here by hand: the slice zero-padded / centre-cropped to the patch size.
            patch = centre_crop(np.asarray(data[0, z]), cache.patch_size, 0)
            truth = np.maximum(centre_crop(np.asarray(seg[0, z]), cache.patch_size, -1), 0)
            with torch.no_grad():
                expected = network.embed(torch.from_numpy(patch.astype(np.float32))[None, None])[0].numpy()
            stored, stored_label = samples.get(index, z)
            assert stored.dtype == np.float16 and stored.shape == expected.shape == (256, 8, 8)
            np.testing.assert_array_equal(stored_label, truth)
            # float16 keeps 11 significant bits (relative error <= 2**-11); 1e-5 absolute covers float32 noise
            # between batch sizes (the cache embeds 8 slices per pass, this check one), measured ~2e-6.
            assert np.all(np.abs(stored.astype(np.float32) - expected) <= np.abs(expected) * 2**-11 + 1e-5)


@pytest.mark.slow
def test_cache_key_follows_the_encoder_identity(in_process):
    keys = {}
    for plans, mode in (
        (PLANS, "cache"),
        ("nnUNetPlans_SAM_tiny_64", "cache"),
        (PLANS, "cache_views:2"),
        ("nnUNetPlans_SAM_tiny_a_128", "cache"),
        ("nnUNetPlans_SAM_tiny_b_128", "cache"),
    ):
        cache, _, _ = ec.cache_for_plans("27", plans, "2d", settings.parse_mode(mode))
        keys[(plans, mode)] = cache.folder
        assert (cache.fields["checkpoint_sha256"] is None) == ("_a_" not in plans and "_b_" not in plans)
    assert len(set(keys.values())) == len(keys)  # input size, mode and each SAM file give their own cache

    # A changed SAM file under a name the plans use: a new key, so a full rebuild instead of stale reuse.
    cache_a, network_a, cases = fresh_cache("nnUNetPlans_SAM_tiny_a_128")
    assert cache_a.ensure(cases[:1], network_a).built == cases[:1]
    weights = in_process.root / "weights"
    shutil.copyfile(weights / "tiny_b.pth", weights / "tiny_a.pth")
    changed, network_changed, _ = ec.cache_for_plans(
        "27", "nnUNetPlans_SAM_tiny_a_128", "2d", settings.parse_mode("cache")
    )
    assert changed.folder != cache_a.folder
    assert changed.ensure(cases[:1], network_changed).built == cases[:1]


@pytest.mark.slow
def test_truncated_missing_or_stale_parts_are_rebuilt_never_read(in_process):
    cache, network, cases = fresh_cache()
    cache.ensure(cases, network)
    before = cache.open(cases).get(0, 3)[0].copy()
    victim = cache.case_folder(cases[0]) / "embeddings.npy"
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size - 1000)
    assert "bytes, expected" in cache.case_problem(cases[0])
    with pytest.raises(InputError, match="bytes, expected"):
        cache.open(cases)  # no silent use
    (cache.case_folder(cases[1]) / "case.json").unlink()  # an interrupted write of a case
    labels = cache.case_folder(cases[2]) / "labels.npy"
    labels.write_bytes(labels.read_bytes()[:-1] + b"\0\0")  # same file, one byte too long
    marker = cache.case_folder(cases[3]) / "case.json"
    info = json.loads(marker.read_text())
    info["source"]["file_bytes"][".b2nd"] += 1  # as if nnU-Net had preprocessed this case again since
    marker.write_text(json.dumps(info))
    assert cache.case_problem(cases[3]) == "the preprocessed case changed"

    messages = []
    report = cache.ensure(cases, network, log=messages.append)
    assert report.built == cases[:4] and report.reused == cases[4:]
    assert len(messages) == 4 and all(m.startswith("embedding cache: rebuilding") for m in messages)
    np.testing.assert_array_equal(cache.open(cases).get(0, 3)[0], before)

    (cache.folder / "manifest.json").write_text('{"format": 0}')  # a foreign folder under this key's name
    assert cache.ensure(cases, network).built == cases


@pytest.mark.slow
def test_shards_cover_every_case_once_and_a_build_resumes(in_process):
    cases = [f"case{i}" for i in range(7)]
    for count in (1, 2, 3, 7, 9):
        shards = [shard_cases(cases, i, count) for i in range(count)]
        assert sorted(sum(shards, [])) == cases

    cache, _, all_cases = fresh_cache()
    cache_cli = ["cache", "27", "-p", PLANS, "--device", "cpu"]
    first = in_process.plugin(*cache_cli, "--shard", "0/2").strip().splitlines()
    assert first[-2].startswith("shard 0/2: 3 cases built (") and first[-2].endswith("cache 3/6 cases complete")
    assert first[-1] == str(cache.folder)
    done = {case: (cache.case_folder(case) / "case.json").stat().st_mtime_ns for case in all_cases[0::2]}
    assert all(cache.case_problem(case) == "not built" for case in all_cases[1::2])
    # An interrupted case: its folder renamed into place never happened, only the temporary is left.
    (cache.folder / "cases" / f".{all_cases[1]}.x.partial").mkdir()

    resumed = in_process.plugin(*cache_cli).strip().splitlines()
    assert resumed[-2].startswith("shard 0/1: 3 cases built (") and "3 already complete; cache 6/6" in resumed[-2]
    assert {case: (cache.case_folder(case) / "case.json").stat().st_mtime_ns for case in done} == done
    assert all(cache.case_problem(case) is None for case in all_cases)


@pytest.mark.slow
def test_views_are_nnunet_augmentations_seeded_per_slice_and_stored_beside_their_labels(in_process):
    cache, network, cases = fresh_cache(mode="cache_views:2")
    report = cache.ensure(cases[:1], network)
    data, seg, _, properties = cache.dataset.load_case(cases[0])
    slices = data.shape[1]
    assert report.samples_built == 2 * slices
    samples = cache.open(cases[:1])
    assert len(samples) == 2 * slices
    for z in (0, slices // 2, slices - 1):
        # Rebuilt from the slice's own seed, the views must be the stored rows 2z and 2z + 1, label with embedding.
        patches, labels = cache.view_sampler.views(
            data, seg, properties["class_locations"], z, 2, cache.view_seed(cases[0], z)
        )
        assert patches.shape == (2, 1, *cache.patch_size) and not np.array_equal(patches[0], patches[1])
        with torch.no_grad():
            expected = network.embed(torch.from_numpy(patches)).numpy()
        for view in range(2):
            stored, stored_label = samples.get(0, 2 * z + view)
            np.testing.assert_array_equal(stored_label, labels[view])
            assert np.all(np.abs(stored.astype(np.float32) - expected[view]) <= np.abs(expected[view]) * 2**-11 + 1e-5)


@pytest.mark.slow
def test_a_view_moves_image_and_label_together(in_process):
    """An image drawn from its own label: after nnU-Net's spatial and intensity transforms, it still outlines it."""
    cache, _, cases = fresh_cache(mode="cache_views:4")
    data, seg, _, properties = cache.dataset.load_case(cases[0])
    drawn = np.where(np.asarray(seg) > 0, 2.0, 0.0).astype(np.float32)  # the image is the label's outline
    z = int(np.argmax((np.asarray(seg)[0] > 0).sum(axis=(1, 2))))
    patches, labels = cache.view_sampler.views(drawn, seg, properties["class_locations"], z, 4, seed=3)
    for patch, label in zip(patches[:, 0], labels):
        assert label.any()
        correlation = np.corrcoef(patch.ravel(), (label > 0).ravel())[0, 1]
        assert correlation > 0.9, correlation


def test_mode_comes_from_the_environment_or_the_plans(monkeypatch):
    monkeypatch.delenv(settings.CACHE_ENV, raising=False)
    assert not settings.mode_from_settings({"sam_encoder": {"type": "tiny"}}).enabled
    assert settings.mode_from_settings({"sam_encoder": {"embedding_cache": "cache_views:4"}}) == settings.CacheMode(
        "cache_views", 4
    )
    monkeypatch.setenv(settings.CACHE_ENV, "off")
    assert not settings.mode_from_settings({"sam_encoder": {"embedding_cache": "cache"}}).enabled
    monkeypatch.setenv(settings.CACHE_ENV, "cache")
    assert settings.mode_from_settings({}) == settings.CacheMode("cache", 1)
    for bad in ("cache_views", "cache_views:0", "yes"):
        with pytest.raises(InputError, match="is not an embedding cache mode"):
            settings.parse_mode(bad)


TRAINING_LOG_LINE = re.compile(
    r"embedding cache: mode cache, key (\w+), folder (\S+); (\d+) training cases, (\d+) slices x 1 view\(s\) = "
    r"(\d+) cached samples; built (\d+) cases \((\d+) samples\) in [\d.]+ s, reused (\d+)"
)


@pytest.mark.slow
def test_training_reads_the_cache_the_command_built_and_builds_what_its_fold_lacks(in_process):
    """From an empty cache: `cache --fold 0 --shard 0/2` builds half of fold 0's training cases; training with plans
    made by `plans --embedding-cache cache` (no variable set) reuses them from the same folder (same key), builds
    the other half, reads every slice of its fold and nothing of the validation cases."""
    workspace = in_process
    plans = workspace.plugin(
        "plans",
        "27",
        "--encoder",
        "tiny",
        "--input-size",
        "128",
        "--batch-size",
        "2",
        "--embedding-cache",
        "cache",
        "--plans-name",
        "nnUNetPlans_SAM_tiny_cached_128",
    )
    plans = plans.strip().splitlines()[-1]
    workspace.plugin("splits", "27", "--labelled", "2", "--seeds", "1", "--val-patients", "1")
    split = json.loads((workspace.root / "nnUNet_preprocessed" / DATASET / "splits_final.json").read_text())[0]
    cache, _, _ = fresh_cache(plans)
    assert cache.folder == fresh_cache()[0].folder  # the plans' name is not part of the key
    train_cases = sorted(split["train"])
    slices = {case: cache.dataset.load_case(case)[0].shape[1] for case in train_cases}
    assert len(train_cases) == 4

    printed = (
        workspace.plugin("cache", "27", "-p", plans, "--fold", "0", "--shard", "0/2", "--device", "cpu")
        .strip()
        .splitlines()
    )
    by_command = train_cases[0::2]
    assert printed[-2].startswith(f"shard 0/2: 2 cases built ({sum(slices[c] for c in by_command)} slices) in ")
    assert printed[-2].endswith("cache 2/4 cases complete") and printed[-1] == str(cache.folder)
    assert [case for case in train_cases if cache.case_problem(case) is None] == by_command

    output = workspace.run("nnUNetv2_train", "27", "2d", "0", "-tr", "SAMLinearTrainer", "-p", plans, "-device", "cpu")
    assert "embedding cache mode: cache (training iterations read cached embeddings" in output
    fold = workspace.root / "nnUNet_results" / DATASET / f"SAMLinearTrainer__{plans}__2d" / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    key, folder, cases, cached_slices, samples, built, built_samples, reused = TRAINING_LOG_LINE.search(log).groups()
    assert (key, folder) == (cache.key[:16], str(cache.folder))
    assert int(cases) == 4 and int(cached_slices) == int(samples) == sum(slices.values())
    assert (int(built), int(built_samples), int(reused)) == (2, sum(slices[c] for c in train_cases[1::2]), 2)
    assert all(cache.case_problem(case) is None for case in train_cases)
    assert all(cache.case_problem(case) == "not built" for case in split["val"])
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()


@pytest.mark.slow
def test_a_cache_for_a_trained_encoder_stops_in_one_line(workspace):
    cached = copy.copy(workspace)
    cached.env = dict(workspace.env, **{settings.CACHE_ENV: "cache"})
    with pytest.raises(RuntimeError) as error:
        cached.run("nnUNetv2_train", "27", "2d", "0", "-tr", "AutoSAMFullFTTrainer", "-p", PLANS, "-device", "cpu")
    last_line = str(error.value).strip().splitlines()[-1]
    assert last_line.startswith(
        "nnunet_autosam: AutoSAMFullFTTrainer trains the encoder, so its embeddings cannot be cached"
    )
