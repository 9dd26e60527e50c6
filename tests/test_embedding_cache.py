"""The embedding cache: same numbers as on the fly, keyed and checked, resumable and shardable, and trainable.

Runs on 3 real ACDC patients (6 cases), planned with the stock nnUNetv2_plan_and_preprocess, with the
file-less `tiny` encoder at 128 (and tiny SAM files for the checkpoint-identity checks).
"""

import copy
import json
import shutil
import time

import numpy as np
import pytest
import torch

from conftest import acdc_root
from nnunet_autosam import embedding_cache as ec
from nnunet_autosam import settings
from nnunet_autosam.demo import Workspace
from nnunet_autosam.errors import InputError
from sam_files import write_sam_checkpoint

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
    plans = ws.prepare(source, PATIENTS, ["--encoder", "tiny", "--input-size", "128", "--batch-size", "2"])
    assert plans == PLANS
    # Other encoder identities on the same preprocessed data: another input size, two different SAM files.
    ws.plugin("plans", "27", "--encoder", "tiny", "--input-size", "64", "--batch-size", "2")
    state = write_sam_checkpoint(weights / "tiny_a.pth", "tiny")
    other = torch.load(state, weights_only=True)
    other["image_encoder.patch_embed.proj.bias"] += 0.5
    torch.save(other, weights / "tiny_b.pth")
    for name in ("a", "b"):
        ws.plugin("plans", "27", "--encoder", "tiny", "--input-size", "128", "--batch-size", "2",
                  "--checkpoint", f"tiny_{name}.pth", "--plans-name", f"nnUNetPlans_SAM_tiny_{name}_128")
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
            assert np.all(np.abs(stored.astype(np.float32) - expected) <= np.abs(expected) * 2 ** -11 + 1e-5)


def test_cache_key_follows_the_encoder_identity(in_process):
    keys = {}
    for plans, mode in ((PLANS, "cache"), ("nnUNetPlans_SAM_tiny_64", "cache"), (PLANS, "cache_views:2"),
                        ("nnUNetPlans_SAM_tiny_a_128", "cache"), ("nnUNetPlans_SAM_tiny_b_128", "cache")):
        cache, _, _ = ec.cache_for_plans("27", plans, "2d", settings.parse_mode(mode))
        keys[(plans, mode)] = cache.folder
        assert (cache.fields["checkpoint_sha256"] is None) == ("_a_" not in plans and "_b_" not in plans)
    assert len(set(keys.values())) == len(keys)  # input size, mode and each SAM file give their own cache

    # A changed SAM file under a name the plans use: a new key, so a full rebuild instead of stale reuse.
    cache_a, network_a, cases = fresh_cache("nnUNetPlans_SAM_tiny_a_128")
    assert cache_a.ensure(cases[:1], network_a).built == cases[:1]
    weights = in_process.root / "weights"
    shutil.copyfile(weights / "tiny_b.pth", weights / "tiny_a.pth")
    changed, network_changed, _ = ec.cache_for_plans("27", "nnUNetPlans_SAM_tiny_a_128", "2d",
                                                     settings.parse_mode("cache"))
    assert changed.folder != cache_a.folder
    assert changed.ensure(cases[:1], network_changed).built == cases[:1]


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


def test_shards_cover_every_case_once_and_a_build_resumes(in_process):
    cases = [f"case{i}" for i in range(7)]
    for count in (1, 2, 3, 7, 9):
        shards = [ec.shard_cases(cases, i, count) for i in range(count)]
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


def test_views_are_nnunet_augmentations_seeded_per_slice(in_process):
    cache, network, cases = fresh_cache(mode="cache_views:3")
    report = cache.ensure(cases[:1], network)
    data, seg, _, properties = cache.dataset.load_case(cases[0])
    assert report.samples_built == 3 * data.shape[1]
    samples = cache.open(cases[:1])
    labels = np.stack([samples.get(0, row)[1] for row in range(3 * data.shape[1])])
    assert labels.shape[1:] == cache.patch_size and set(np.unique(labels)) <= {0, 1, 2, 3}
    z = data.shape[1] // 2
    patches, view_labels = cache.view_sampler.views(data, seg, properties["class_locations"], z, 3, seed=7)
    again, again_labels = cache.view_sampler.views(data, seg, properties["class_locations"], z, 3, seed=7)
    np.testing.assert_array_equal(patches, again)
    np.testing.assert_array_equal(view_labels, again_labels)
    assert patches.shape == (3, 1, *cache.patch_size)
    assert not np.array_equal(patches[0], patches[1])  # views differ from each other


def test_mode_comes_from_the_environment_or_the_plans(monkeypatch):
    monkeypatch.delenv(settings.CACHE_ENV, raising=False)
    assert not settings.mode_from_settings({"sam_encoder": {"type": "tiny"}}).enabled
    assert settings.mode_from_settings({"sam_encoder": {"embedding_cache": "cache_views:4"}}) == \
        settings.CacheMode("cache_views", 4)
    monkeypatch.setenv(settings.CACHE_ENV, "off")
    assert not settings.mode_from_settings({"sam_encoder": {"embedding_cache": "cache"}}).enabled
    monkeypatch.setenv(settings.CACHE_ENV, "cache")
    assert settings.mode_from_settings({}) == settings.CacheMode("cache", 1)
    for bad in ("cache_views", "cache_views:0", "yes"):
        with pytest.raises(InputError, match="is not an embedding cache mode"):
            settings.parse_mode(bad)


def test_training_in_cache_mode_with_the_stock_cli(workspace):
    cached = copy.copy(workspace)
    cached.env = dict(workspace.env, **{settings.CACHE_ENV: "cache"})
    train = ["nnUNetv2_train", "27", "2d", "0", "-tr", "SAMLinearTrainer", "-p", PLANS, "-device", "cpu"]
    output = cached.run(*train)
    assert "embedding cache mode: cache (training iterations read cached embeddings" in output
    fold = workspace.root / "nnUNet_results" / DATASET / f"SAMLinearTrainer__{PLANS}__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "embedding cache: mode cache, key " in log and " cached samples; built " in log
    assert (fold / "validation" / "summary.json").is_file()

    with pytest.raises(RuntimeError) as error:
        cached.run(*[("AutoSAMFullFTTrainer" if part == "SAMLinearTrainer" else part) for part in train])
    last_line = str(error.value).strip().splitlines()[-1]
    assert last_line.startswith("nnunet_autosam: AutoSAMFullFTTrainer trains the encoder, so its embeddings cannot "
                                "be cached")
