"""Zero-shot SAM with ground-truth box prompts: box plumbing, an oracle decoder, real ACDC cases, the CLI."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from sam_files import write_sam_checkpoint

from nnunet_autosam import cli
from nnunet_autosam.data.conversion import convert_acdc
from nnunet_autosam.inference import box_prompts, zero_shot
from nnunet_autosam.utilities.errors import InputError

DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def synthetic_reference(height=24, width=32) -> np.ndarray:
    """(4, H, W) labels: an empty slice, disk + ring + rectangle (boxes of 1 and 2 overlap), a ring alone."""
    reference = np.zeros((4, height, width), dtype=np.uint8)
    ys, xs = np.mgrid[:height, :width]
    for z, (cy, cx, inner, outer) in {1: (10, 12, 4, 7), 2: (13, 16, 3, 6), 3: (12, 20, 3, 5)}.items():
        distance = np.hypot(ys - cy, xs - cx)
        reference[z][distance <= outer] = 2
        if z != 3:
            reference[z][distance <= inner] = 1
    reference[1, 3:9, 24:30] = 3
    reference[2, 15:21, 2:7] = 3
    return reference


def write_volume(array: np.ndarray, path, reference_image=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    if reference_image is None:
        image.SetSpacing((1.25, 0.8, 6.0))
        image.SetOrigin((-10.0, 4.5, 2.0))
        image.SetDirection(DIRECTION)
    else:
        image.CopyInformation(reference_image)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return image


def write_synthetic_case(folder, case, reference, images="images", labels="labels") -> None:
    rng = np.random.default_rng(len(case))
    image = write_volume(
        (rng.normal(100, 20, reference.shape) + 50 * reference).astype(np.float32),
        folder / images / f"{case}_0000.nii.gz",
    )
    write_volume(reference, folder / labels / f"{case}.nii.gz", image)


def read_array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def tight_box(mask: np.ndarray) -> tuple:
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max(), ys.max()


# --- boxes and overlaps ----------------------------------------------------------------------------------------


def test_tight_boxes_hold_each_class_and_touch_its_extremes():
    label_slice = synthetic_reference()[1]
    classes, boxes = box_prompts.tight_boxes(label_slice, 0, np.random.default_rng(0))
    assert classes.tolist() == [1, 2, 3]
    for label, box in zip(classes, boxes):
        assert tuple(box) == tight_box(label_slice == label)


def test_jittered_boxes_are_seeded_bounded_and_inside_the_slice():
    label_slice = synthetic_reference()[1]
    _, tight = box_prompts.tight_boxes(label_slice, 0, np.random.default_rng(0))
    _, first = box_prompts.tight_boxes(label_slice, 3, np.random.default_rng(7))
    _, again = box_prompts.tight_boxes(label_slice, 3, np.random.default_rng(7))
    _, other = box_prompts.tight_boxes(label_slice, 3, np.random.default_rng(8))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.abs(first - tight).max() <= 3
    height, width = label_slice.shape
    assert (first >= 0).all() and (first[:, [0, 2]] < width).all() and (first[:, [1, 3]] < height).all()
    assert (first[:, 0] <= first[:, 2]).all() and (first[:, 1] <= first[:, 3]).all()


def test_boxes_scale_x_by_width_and_y_by_height():
    scaled = box_prompts.boxes_to_input_frame(np.array([[8, 6, 31, 23]]), (24, 32), 128)
    assert np.allclose(scaled, [[32, 32, 124, 128 * 23 / 24]])


def test_overlaps_go_to_the_highest_logit_above_zero():
    logits = torch.tensor([[[2.0, 1.0, -1.0, 0.5]], [[1.0, 3.0, -2.0, 0.5]]])  # (K=2, H=1, W=4)
    assert box_prompts.resolve_overlaps(np.array([1, 3]), logits).tolist() == [[1, 3, 0, 1]]


def test_clipping_drops_logits_outside_each_box():
    logits = box_prompts.clip_to_boxes(torch.ones(1, 4, 5), np.array([[1, 0, 2, 2]]))
    assert (box_prompts.resolve_overlaps(np.array([1]), logits) > 0).astype(int).tolist() == [
        [0, 1, 1, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0],
    ]


# --- the oracle: perfect boxes + a decoder that answers the reference give the reference back ---------------------


class ReferenceOracle:
    """Stands in for SAM's decoder. Each box it receives (encoder-input frame) must be the tight box of one
    (slice, class) of the reference, scaled x by S/W and y by S/H; it answers that class's reference mask as
    +-1 logits at the decoder's resolution S/4. Wrong box transforms find no match and fail the test."""

    def __init__(self, reference: np.ndarray, input_size: int):
        height, width = reference.shape[1:]
        scale = np.array([input_size / width, input_size / height] * 2)
        self.low_res = input_size // 4
        self.keys, self.masks = [], []
        for label_slice in reference:
            for label in np.unique(label_slice)[1:]:
                self.keys.append(np.array(tight_box(label_slice == label)) * scale)
                self.masks.append(torch.from_numpy(label_slice == label).float())
        self.keys = np.stack(self.keys)
        distances = np.abs(self.keys[:, None] - self.keys[None]).max(-1) + np.eye(len(self.keys))
        assert distances.min() > 0.5, "every (slice, class) must have its own box"
        self.calls = 0

    def mask_for(self, box: torch.Tensor) -> torch.Tensor:
        distance = np.abs(self.keys - box.cpu().double().numpy()).max(axis=1)
        assert distance.min() < 1e-3, f"box {box.tolist()} is no reference box in the input frame"
        mask = self.masks[int(distance.argmin())][None, None]
        return F.interpolate(mask, size=(self.low_res, self.low_res), mode="nearest-exact")[0, 0] * 2 - 1

    def decode(self, embedding: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        assert embedding.shape[0] == 1 and boxes.shape[1] == 4
        self.calls += 1
        return torch.stack([self.mask_for(box) for box in boxes])


def test_oracle_decoder_returns_the_reference_exactly(tmp_path, monkeypatch):
    # S/4 = 64 is at least twice the slice's 24 x 32, so the decoder-resolution mask resized back is exact.
    reference = synthetic_reference()
    write_synthetic_case(tmp_path, "synth_001", reference)
    oracle = ReferenceOracle(reference, input_size=256)
    monkeypatch.setattr(
        box_prompts.BoxPromptSegmenter, "decode", lambda self, embedding, boxes: oracle.decode(embedding, boxes)
    )
    written = zero_shot.predict_zero_shot(
        tmp_path / "images", tmp_path / "out", [tmp_path / "labels"], "tiny", 256, batch_size=2, device="cpu"
    )
    assert written == [tmp_path / "out" / "synth_001.nii.gz"]
    assert oracle.calls == 3  # the empty slice is not prompted
    assert np.array_equal(read_array(written[0]), reference)
    prediction = sitk.ReadImage(str(written[0]))
    image = sitk.ReadImage(str(tmp_path / "images/synth_001_0000.nii.gz"))
    assert prediction.GetPixelID() == sitk.sitkUInt8
    assert np.allclose(prediction.GetDirection(), DIRECTION) and np.allclose(
        prediction.GetSpacing(), image.GetSpacing()
    )


# --- real ACDC cases with the tiny encoder -----------------------------------------------------------------------


def test_acdc_predictions_keep_geometry_and_stay_inside_the_boxes(acdc_dir, nnunet_env):
    raw = convert_acdc(acdc_dir, dataset_id=27, patients=["patient001", "patient002"])
    written = zero_shot.predict_zero_shot(
        raw / "imagesTr",
        nnunet_env["nnUNet_raw"] / "out",
        [raw / "labelsTr"],
        "tiny",
        128,
        batch_size=4,
        device="cpu",
        clip_to_box=True,
    )
    cases = sorted(path.name[: -len("_0000.nii.gz")] for path in (raw / "imagesTr").iterdir())
    assert [path.name for path in written] == [f"{case}.nii.gz" for case in cases] and len(cases) == 4
    foreground = 0
    for case, path in zip(cases, written):
        image = sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0000.nii.gz"))
        prediction = sitk.ReadImage(str(path))
        assert prediction.GetSize() == image.GetSize()
        for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
            assert np.allclose(getattr(prediction, getter)(), getattr(image, getter)(), rtol=0, atol=1e-5), getter
        predicted, reference = sitk.GetArrayFromImage(prediction), read_array(raw / "labelsTr" / f"{case}.nii.gz")
        for z in range(len(reference)):
            for label in np.unique(predicted[z])[1:]:
                assert (reference[z] == label).any(), f"{case} slice {z}: class {label} was never prompted"
                x0, y0, x1, y1 = tight_box(reference[z] == label)
                ys, xs = np.nonzero(predicted[z] == label)
                assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1
        foreground += int((predicted > 0).sum())
    assert foreground > 0, "the box check above must not pass on empty predictions"


# --- weights ------------------------------------------------------------------------------------------------------


def test_prompt_encoder_and_decoder_load_from_the_sam_file_at_another_input_size(tmp_path):
    path = write_sam_checkpoint(tmp_path / "sam_tiny.pth", "tiny")
    saved = torch.load(path, weights_only=True)
    segmenter = box_prompts.BoxPromptSegmenter.build("tiny", 128, str(path))
    for prefix, module in (("prompt_encoder.", segmenter.prompt_encoder), ("mask_decoder.", segmenter.mask_decoder)):
        for key, value in module.state_dict().items():
            assert torch.equal(value, saved[prefix + key]), prefix + key
    assert segmenter.prompt_encoder.image_embedding_size == (8, 8)
    with torch.no_grad():
        embedding = segmenter.embed(torch.randn(1, 1, 40, 30))
        logits = segmenter.decode(embedding, torch.tensor([[10.0, 20.0, 60.0, 90.0], [0.0, 0.0, 127.0, 127.0]]))
    assert embedding.shape == (1, 256, 8, 8) and logits.shape == (2, 32, 32)


def test_a_file_without_decoder_weights_is_refused(tmp_path):
    path = write_sam_checkpoint(tmp_path / "sam_tiny.pth", "tiny")
    state = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("mask_decoder.")}, path)
    with pytest.raises(InputError, match="mask_decoder"):
        box_prompts.BoxPromptSegmenter.build("tiny", 128, str(path))


# --- errors -------------------------------------------------------------------------------------------------------


def test_missing_reference_labels_are_an_input_error(tmp_path):
    write_synthetic_case(tmp_path, "synth_001", synthetic_reference())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no reference labels for synth_001.*--labels-dir"):
        zero_shot.predict_zero_shot(tmp_path / "images", tmp_path / "out", [tmp_path / "empty"], "tiny", 128)
    assert not (tmp_path / "out").exists()


def test_missing_images_folder_and_a_missing_channel_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="images folder .* not found"):
        zero_shot.predict_zero_shot(tmp_path / "nowhere", tmp_path / "out", [tmp_path], "tiny", 128)
    write_synthetic_case(tmp_path, "synth_001", synthetic_reference())
    write_synthetic_case(tmp_path, "synth_002", synthetic_reference())
    shutil.copyfile(tmp_path / "images/synth_001_0000.nii.gz", tmp_path / "images/synth_001_0001.nii.gz")
    with pytest.raises(InputError, match="synth_002_0001.nii.gz is missing: case synth_002 has other channels"):
        zero_shot.predict_zero_shot(
            tmp_path / "images", tmp_path / "out", [tmp_path / "labels"], "tiny", 128, channel=1
        )
    with pytest.raises(InputError, match="holds no CASE_0002.nii.gz images"):
        zero_shot.predict_zero_shot(
            tmp_path / "images", tmp_path / "out", [tmp_path / "labels"], "tiny", 128, channel=2
        )
    assert not (tmp_path / "out").exists()


def synthetic_raw_dataset(raw, channels=("MRI",)):
    """Dataset901_Synth: case a labelled in labelsTr, case b in labelsTs (the default lookup tries both)."""
    folder = raw / "Dataset901_Synth"
    write_synthetic_case(folder, "synth_a", synthetic_reference(), "imagesTr", "labelsTr")
    write_synthetic_case(folder, "synth_b", synthetic_reference()[::-1].copy(), "imagesTr", "labelsTs")
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {str(i): name for i, name in enumerate(channels)},
                "labels": {"background": 0, "a": 1, "b": 2, "c": 3},
                "numTraining": 2,
                "file_ending": ".nii.gz",
            }
        )
    )
    return folder


def test_sam_sees_the_chosen_channel_of_a_multi_channel_dataset(nnunet_env, monkeypatch, capsys):
    folder = synthetic_raw_dataset(nnunet_env["nnUNet_raw"], channels=("T1", "T2"))
    second_channels = {}
    for case in ("synth_a", "synth_b"):
        first = sitk.ReadImage(str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        second = -(sitk.GetArrayFromImage(first) ** 2)  # another image on the same grid
        write_volume(second, folder / "imagesTr" / f"{case}_0001.nii.gz", first)
        second_channels[case] = second
    seen = []

    def record(segmenter, volume, reference, *args):
        seen.append(volume)
        return np.zeros(reference.shape, np.uint8)

    monkeypatch.setattr(zero_shot, "segment_volume", record)
    command = ["zero-shot", "-d", "901", "-i", str(folder / "imagesTr"), "-o", str(folder / "out")]
    command += ["--encoder", "tiny", "--input-size", "128", "--device", "cpu"]
    cli.main([*command, "--channel", "1"])
    assert "from channel 1 (T2) of each case, other channels ignored" in capsys.readouterr().out
    assert len(seen) == 2
    for volume, case in zip(seen, ("synth_a", "synth_b")):
        second = second_channels[case]
        assert np.allclose(volume, (second - second.mean()) / second.std(), atol=1e-4)
    with pytest.raises(InputError, match="--channel 2 is not a channel of Dataset901_Synth, whose dataset.json has 2"):
        cli.main([*command, "--channel", "2"])


# --- the command --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_runs_with_the_tiny_encoder(nnunet_env, tmp_path):
    folder = synthetic_raw_dataset(nnunet_env["nnUNet_raw"])
    command = (
        [shutil.which("nnunet-autosam")]
        if shutil.which("nnunet-autosam")
        else [sys.executable, "-m", "nnunet_autosam.cli"]
    )
    result = subprocess.run(
        command
        + [
            "zero-shot",
            "-d",
            "901",
            "-i",
            str(folder / "imagesTr"),
            "-o",
            str(tmp_path / "out"),
            "--encoder",
            "tiny",
            "--input-size",
            "128",
            "--jitter",
            "2",
            "--batch-size",
            "2",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["synth_a.nii.gz", "synth_b.nii.gz"]
    assert "oracle-prompt" in result.stdout
