"""Two image channels through the stock CLI: each channel strategy trains from the cache, predicts and memoises.

A synthetic 2-channel dataset (each channel the same blobs in its own contrast) and the `tiny` encoder:
plumbing, not quality.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from channel_workspaces import TINY, channel_workspace, predict_and_check

pytestmark = pytest.mark.slow  # nnU-Net's CLI in subprocesses


@pytest.fixture(scope="module")
def two_channels(tmp_path_factory):
    return channel_workspace(tmp_path_factory.mktemp("two_channels"), 411, 2)


@pytest.mark.parametrize(
    ("strategy", "cache_mode", "embedding_channels"), [("stack", "cache", 256), ("separate", "cache_views:2", 512)]
)
def test_two_channels_train_from_the_cache_and_predict_with_each_strategy(
    two_channels, strategy, cache_mode, embedding_channels
):
    workspace = two_channels
    plans = workspace.plugin("plans", "411", *TINY, "--channels", strategy, "--plans-name", f"SAM_{strategy}")
    plans = plans.strip().splitlines()[-1]
    planned = json.loads(
        (workspace.root / "nnUNet_preprocessed" / workspace.dataset_name / f"{plans}.json").read_text()
    )
    assert {"channels": strategy, "num_channels": 2}.items() <= planned["configurations"]["2d"]["sam_encoder"].items()

    workspace.env["AUTOSAM_EMBEDDING_CACHE"] = cache_mode
    workspace.train("AutoSAMTrainer", 0, plans, "cpu")
    caches = workspace.root / "nnUNet_preprocessed" / workspace.dataset_name / "autosam_cache"
    (folder,) = [
        f for f in caches.iterdir() if json.loads((f / "manifest.json").read_text())["channels"] == f"{strategy}:2"
    ]
    embeddings = np.load(next(folder.glob("cases/*/embeddings.npy")), mmap_mode="r")
    assert embeddings.shape[1] == embedding_channels  # one 256-channel embedding per encoder pass

    memo = workspace.root / "memo"
    predict_and_check(workspace, "AutoSAMTrainer", plans, memo)
    shapes = {np.load(path, mmap_mode="r").shape[1] for path in memo.rglob("*.npy")}
    assert embedding_channels in shapes


def test_the_strategies_never_share_a_cache_or_a_memo_entry(two_channels):
    caches = two_channels.root / "nnUNet_preprocessed" / two_channels.dataset_name / "autosam_cache"
    manifests = [json.loads((f / "manifest.json").read_text()) for f in caches.iterdir()]
    if len(manifests) < 2:
        pytest.skip("needs both strategies' training runs (the test above)")
    assert {m["channels"] for m in manifests} == {"stack:2", "separate:2"}
    shapes = [np.load(path, mmap_mode="r").shape[1] for path in (two_channels.root / "memo").rglob("*.npy")]
    assert sorted(set(shapes)) == [256, 512]  # same tiles, two keys: each strategy its own entries


def test_prefilled_memo_holds_exactly_the_tiles_nnunet_predict_asks_for(two_channels):
    """prefill-memo replays nnU-Net's preprocessing and tiling: the same keys as a prediction's own entries,
    embeddings equal within float rounding, and nnUNetv2_predict afterwards computes no tile itself."""
    workspace, one_by_one = two_channels, two_channels.root / "memo"
    if not (workspace.root / "pred_AutoSAMTrainer_SAM_separate").is_dir():
        pytest.skip("needs the separate strategy's prediction (the test above)")
    prefilled = workspace.root / "memo_prefilled"
    workspace.env["AUTOSAM_EMBEDDING_MEMO"] = str(prefilled)
    inputs = str(workspace.root / "inputs")
    workspace.plugin(
        "prefill-memo", "-i", inputs, "-d", "411", "-p", "SAM_separate", "--device", "cpu", "--batch-size", "3"
    )
    entries = {path.name: path for path in prefilled.rglob("*.npy")}
    assert entries and set(entries) <= {path.name for path in one_by_one.rglob("*.npy")}
    for name, path in entries.items():
        expected = np.load(next(one_by_one.rglob(name)))
        assert np.allclose(np.load(path), expected, atol=1e-4), name
    output = predict_and_check(workspace, "AutoSAMTrainer", "SAM_separate", prefilled, "_prefilled")
    assert {path.name for path in prefilled.rglob("*.npy")} == set(entries)  # every tile was there already
    labels = [
        sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "patient01_a.nii.gz")))
        for folder in (output, workspace.root / "pred_AutoSAMTrainer_SAM_separate")
    ]
    assert (labels[0] == labels[1]).mean() >= 0.999  # nnUNetv2_predict's labels, kept
