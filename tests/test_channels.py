"""Several image channels through the stock CLI: each channel strategy trains, predicts, caches and memoises.

Synthetic datasets with 2 and 4 channels (each channel the same blobs in its own contrast), and a 2.5D
dataset of `nnunet-autosam neighbours`, with the `tiny` encoder: plumbing, not quality.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from sam_files import write_sam_checkpoint

from nnunet_autosam.data.synthetic import write_synthetic_raw_dataset
from nnunet_autosam.utilities.commands import Workspace

pytestmark = pytest.mark.slow  # nnU-Net's CLI in subprocesses

SHORT_SCHEDULE = {"AUTOSAM_NUM_EPOCHS": "1", "AUTOSAM_ITERS_PER_EPOCH": "2", "AUTOSAM_VAL_ITERS_PER_EPOCH": "1"}
# A tiny SAM file: only a frozen encoder from a weights file has embeddings that the memo may keep.
TINY = ("--encoder", "tiny", "--input-size", "128", "--batch-size", "2", "--checkpoint", "sam_tiny_test.pth")


def _workspace(root, dataset_id: int, num_channels: int) -> Workspace:
    workspace = Workspace(root, SHORT_SCHEDULE, {"nnUNet_SAM_weights": str(root / "weights")}, str(dataset_id))
    (root / "weights").mkdir()
    write_sam_checkpoint(root / "weights" / "sam_tiny_test.pth", "tiny")
    write_synthetic_raw_dataset(
        workspace.root / "nnUNet_raw",
        dataset_id=dataset_id,
        name=f"Channels{num_channels}",
        num_patients=5,
        cases_per_patient=1,
        num_channels=num_channels,
    )
    workspace.run("nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "2d", "-np", "1")
    inputs = workspace.root / "inputs"
    inputs.mkdir()
    for path in sorted((workspace.root / "nnUNet_raw").glob("*/imagesTr/patient01_a_*.nii.gz")):
        (inputs / path.name).symlink_to(path)
    return workspace


@pytest.fixture(scope="module")
def two_channels(tmp_path_factory):
    return _workspace(tmp_path_factory.mktemp("two_channels"), 411, 2)


def _predict_and_check(workspace: Workspace, trainer: str, plans: str, memo) -> None:
    output = workspace.root / f"pred_{trainer}_{plans}"
    workspace.env["AUTOSAM_EMBEDDING_MEMO"] = str(memo)
    workspace.predict(workspace.root / "inputs", output, trainer, 0, plans, "cpu")
    image = sitk.ReadImage(str(workspace.root / "inputs" / "patient01_a_0000.nii.gz"))
    prediction = sitk.ReadImage(str(output / "patient01_a.nii.gz"))
    assert prediction.GetSize() == image.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2, 3}


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
    _predict_and_check(workspace, "AutoSAMTrainer", plans, memo)
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
    _predict_and_check(workspace, "AutoSAMTrainer", "SAM_separate", prefilled)
    assert {path.name for path in prefilled.rglob("*.npy")} == set(entries)  # every tile was there already


def test_four_channels_default_to_separate_passes_and_stack_is_refused_in_one_line(tmp_path):
    workspace = _workspace(tmp_path, 412, 4)
    with pytest.raises(RuntimeError) as refused:
        workspace.plugin("plans", "412", *TINY, "--channels", "stack")
    last_line = str(refused.value).strip().splitlines()[-1]
    assert "stack feeds at most 3 channels" in last_line and "--channels separate" in last_line
    assert not list((workspace.root / "nnUNet_preprocessed").glob("*/nnUNetPlans_SAM_tiny_128.json"))

    plans = workspace.plugin("plans", "412", *TINY).strip().splitlines()[-1]
    workspace.train("SAMCNNTrainer", 0, plans, "cpu")  # encoder on the fly
    fold = workspace.root / "nnUNet_results" / workspace.dataset_name / f"SAMCNNTrainer__{plans}__2d" / "fold_0"
    weights = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert weights["_extra_state"]["channels"] == "separate:4"
    assert weights["fusion.conv.weight"].shape == (256, 4 * 256, 1, 1)  # the fusion trains and travels with the head
    _predict_and_check(workspace, "SAMCNNTrainer", plans, workspace.root / "memo")


def test_a_neighbours_dataset_trains_on_stacked_slices_and_predicts_shifted_images(tmp_path):
    workspace = _workspace(tmp_path, 413, 1)
    workspace.plugin("neighbours", "413", "-d", "414")
    workspace.dataset = "414"
    workspace.run("nnUNetv2_plan_and_preprocess", "-d", "414", "-c", "2d", "-np", "1")
    plans = workspace.plugin("plans", "414", *TINY).strip().splitlines()[-1]
    planned = json.loads(
        (workspace.root / "nnUNet_preprocessed" / workspace.dataset_name / f"{plans}.json").read_text()
    )
    encoder = planned["configurations"]["2d"]["sam_encoder"]
    assert (encoder["channels"], encoder["num_channels"]) == ("stack", 3)  # one pass: the slices as R, G, B

    workspace.train("SAMLinearTrainer", 0, plans, "cpu")
    shifted = tmp_path / "inputs_2p5d"
    workspace.plugin("neighbours", "413", "--images", str(tmp_path / "inputs"), "--output", str(shifted))
    output = tmp_path / "pred_2p5d"
    workspace.predict(shifted, output, "SAMLinearTrainer", 0, plans, "cpu")
    image = sitk.ReadImage(str(tmp_path / "inputs" / "patient01_a_0000.nii.gz"))
    assert sitk.ReadImage(str(output / "patient01_a.nii.gz")).GetSize() == image.GetSize()


def test_region_based_labels_are_refused_by_the_sam_trainers_in_one_line(tmp_path):
    workspace = Workspace(tmp_path, SHORT_SCHEDULE, dataset="415")
    source = write_synthetic_raw_dataset(
        workspace.root / "nnUNet_raw", dataset_id=415, num_patients=5, cases_per_patient=1
    )
    description = json.loads((source / "dataset.json").read_text())
    description.update(labels={"background": 0, "all_blobs": [1, 2, 3], "blob3": 3}, regions_class_order=[1, 3])
    (source / "dataset.json").write_text(json.dumps(description))
    plans = workspace.plan(["--encoder", "tiny", "--input-size", "128", "--batch-size", "2"])
    with pytest.raises(RuntimeError) as refused:
        workspace.train("SAMLinearTrainer", 0, plans, "cpu")
    last_line = str(refused.value).strip().splitlines()[-1]
    assert "region-based labels" in last_line and "-tr nnUNetTrainer" in last_line
