"""`nnunet-autosam neighbours`: every channel holds the right neighbouring slices, along nnU-Net's 2d slicing axis.

Quick: small NIfTI volumes whose every voxel value names its position. The slow test runs
nnUNetv2_plan_and_preprocess on a derived dataset and checks the preprocessed channels really are neighbours.
"""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import run

from nnunet_autosam.cli import main
from nnunet_autosam.utilities.errors import InputError

DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # a rotation, so that CopyInformation is tested
ORIGIN = (12.5, -40.0, 7.25)


def positional_volume(shape, dtype=np.int16) -> np.ndarray:
    """Voxel value 100 z + 10 y + x: any slice, along any axis, is told apart from every other."""
    z, y, x = np.indices(shape)
    return (100 * z + 10 * y + x).astype(dtype)


def write_image(array: np.ndarray, path, spacing) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION if array.ndim == 3 else (0.0, 1.0, -1.0, 0.0))
    sitk.WriteImage(image, str(path), useCompression=True)


def write_raw_dataset(raw, dataset_id, volumes, spacing, channels=("CT",), test_volumes=None, extra=None):
    """DatasetNNN_Source with imagesTr/labelsTr (and imagesTs/labelsTs for ``test_volumes``) and dataset.json."""
    folder = raw / f"Dataset{dataset_id:03d}_Source"
    for suffix, cases in (("Tr", volumes), ("Ts", test_volumes or {})):
        for case, volume in cases.items():
            for sub in (f"images{suffix}", f"labels{suffix}"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            for channel in range(len(channels)):
                write_image(volume, folder / f"images{suffix}" / f"{case}_{channel:04d}.nii.gz", spacing)
            write_image((volume % 3).astype(np.uint8), folder / f"labels{suffix}" / f"{case}.nii.gz", spacing)
    dataset = {
        "channel_names": {str(i): name for i, name in enumerate(channels)},
        "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": len(volumes),
        "file_ending": ".nii.gz",
        "name": "Source",
        **(extra or {}),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


def read(path):
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def expected_channels(volume: np.ndarray, axis: int) -> list:
    """Slice z of channel c = source slice z - 1, z, z + 1 (edges: the edge slice itself), slice by slice."""
    last = volume.shape[axis] - 1
    channels = []
    for offset in (-1, 0, 1):
        slices = [np.take(volume, [min(max(z + offset, 0), last)], axis=axis) for z in range(last + 1)]
        channels.append(np.concatenate(slices, axis=axis))
    return channels


def assert_neighbours(images_dir, case, source_image_path, axis):
    source, volume = read(source_image_path)
    for channel, expected in enumerate(expected_channels(volume, axis)):
        image, array = read(images_dir / f"{case}_{channel:04d}.nii.gz")
        assert array.dtype == volume.dtype
        assert np.array_equal(array, expected), f"channel {channel} of {case}"
        assert image.GetSpacing() == source.GetSpacing()
        assert image.GetOrigin() == source.GetOrigin()
        assert image.GetDirection() == source.GetDirection()


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_each_channel_holds_the_neighbouring_slices_and_labels_are_unchanged(nnunet_env, capsys):
    raw = nnunet_env["nnUNet_raw"]
    volumes = {"case1": positional_volume((5, 4, 6)), "case2": positional_volume((3, 4, 6)) + 7}
    source = write_raw_dataset(
        raw, 27, volumes, (0.8, 0.8, 4.0), test_volumes={"case9": positional_volume((4, 4, 6))}, extra={"custom": 1}
    )
    (source / "acdc_info.json").write_text('{"p1": {"cases": ["case1", "case2"], "subset": "training"}}')
    assert main(["neighbours", "27", "-d", "28"]) == 0
    output = capsys.readouterr().out
    assert "array axis 0 (z)" in output and "largest median spacing (4, 0.8, 0.8)" in output
    target = raw / "Dataset028_SourceNeighbours"
    for suffix, cases in (("Tr", ["case1", "case2"]), ("Ts", ["case9"])):
        for case in cases:
            assert_neighbours(target / f"images{suffix}", case, source / f"images{suffix}" / f"{case}_0000.nii.gz", 0)
            label = target / f"labels{suffix}" / f"{case}.nii.gz"
            assert label.read_bytes() == (source / f"labels{suffix}" / f"{case}.nii.gz").read_bytes()
    assert len(list((target / "imagesTr").iterdir())) == 6
    dataset = json.loads((target / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT", "1": "CT", "2": "CT"}
    assert dataset["custom"] == 1 and dataset["numTraining"] == 2 and dataset["labels"]["b"] == 2
    assert dataset["derived_from"] == {
        "dataset": "Dataset027_Source",
        "folder": str(source),
        "neighbours_axis": 0,
        "neighbours_offsets": [-1, 0, 1],
        "edges": "replicate",
    }
    assert (target / "acdc_info.json").read_text() == (source / "acdc_info.json").read_text()
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_the_axis_comes_from_the_plans_when_the_source_is_planned(nnunet_env, capsys):
    volume = positional_volume((5, 4, 6))
    write_raw_dataset(nnunet_env["nnUNet_raw"], 27, {"case1": volume}, (0.8, 0.8, 4.0))  # spacing alone: axis 0
    plans = nnunet_env["nnUNet_preprocessed"] / "Dataset027_Source" / "nnUNetPlans.json"
    plans.parent.mkdir()
    plans.write_text(json.dumps({"transpose_forward": [2, 0, 1], "transpose_backward": [1, 2, 0]}))
    main(["neighbours", "Dataset027_Source", "-d", "28", "--name", "Stacked"])
    assert f"array axis 2 (x): transpose_forward [2, 0, 1] in {plans}" in capsys.readouterr().out
    target = nnunet_env["nnUNet_raw"] / "Dataset028_Stacked"
    assert_neighbours(
        target / "imagesTr", "case1", nnunet_env["nnUNet_raw"] / "Dataset027_Source/imagesTr/case1_0000.nii.gz", 2
    )
    assert json.loads((target / "dataset.json").read_text())["derived_from"]["neighbours_axis"] == 2


def test_without_plans_the_axis_of_the_largest_spacing_is_used(nnunet_env, capsys):
    # SimpleITK spacing (x, y, z) = (1, 5, 1): the array's axis 1 (y) is the coarse one.
    volume = positional_volume((4, 5, 6), np.float32)
    source = write_raw_dataset(nnunet_env["nnUNet_raw"], 27, {"case1": volume, "case2": volume * 2}, (1.0, 5.0, 1.0))
    main(["neighbours", "27", "-d", "28"])
    assert "array axis 1 (y): largest median spacing (1, 5, 1)" in capsys.readouterr().out
    for case in ("case1", "case2"):
        assert_neighbours(
            nnunet_env["nnUNet_raw"] / "Dataset028_SourceNeighbours" / "imagesTr",
            case,
            source / "imagesTr" / f"{case}_0000.nii.gz",
            1,
        )


def test_images_to_predict_are_shifted_along_the_sources_axis(nnunet_env, tmp_path):
    write_raw_dataset(nnunet_env["nnUNet_raw"], 27, {"case1": positional_volume((3, 4, 5))}, (4.0, 1.0, 1.0))
    images = tmp_path / "to_predict"
    images.mkdir()
    write_image(positional_volume((3, 4, 5), np.uint8), images / "new_0000.nii.gz", (4.0, 1.0, 1.0))
    output = tmp_path / "shifted"
    assert main(["neighbours", "27", "--images", str(images), "--output", str(output)]) == 0
    assert sorted(p.name for p in output.iterdir()) == [f"new_000{c}.nii.gz" for c in range(3)]
    assert_neighbours(output, "new", images / "new_0000.nii.gz", 2)  # spacing x = 4: the array's axis 2
    with pytest.raises(InputError, match="--overwrite"):
        main(["neighbours", "27", "--images", str(images), "--output", str(output)])
    main(["neighbours", "27", "--images", str(images), "--output", str(output), "--overwrite"])


def refusal(argv) -> str:
    with pytest.raises(InputError) as error:
        main(argv)
    assert "\n" not in error.value.message
    return error.value.message


def test_refusals_are_one_line_and_write_nothing(nnunet_env, tmp_path):
    raw = nnunet_env["nnUNet_raw"]
    write_raw_dataset(raw, 27, {"case1": positional_volume((3, 4, 5))}, (1.0, 1.0, 3.0))
    write_raw_dataset(raw, 30, {"case1": positional_volume((3, 4, 5))}, (1.0, 1.0, 3.0), channels=("T1", "T2"))
    flat = write_raw_dataset(raw, 31, {}, (1.0, 1.0))
    for sub, name in (("imagesTr", "slice_0000"), ("labelsTr", "slice")):
        (flat / sub).mkdir()
        write_image(positional_volume((1, 4, 5))[0] % 3, flat / sub / f"{name}.nii.gz", (1.0, 1.0))
    (raw / "Dataset028_SourceNeighbours").mkdir()
    before = listing(raw)

    assert "2 channels" in refusal(["neighbours", "30", "-d", "40"])
    assert "a single slice has no neighbours" in refusal(["neighbours", "31", "-d", "40"])
    assert "cannot find one dataset for '99'" in refusal(["neighbours", "99", "-d", "40"])
    assert "pass --overwrite" in refusal(["neighbours", "27", "-d", "28"])
    images = tmp_path / "to_predict"
    images.mkdir()
    write_image(positional_volume((3, 4, 5)), images / "new_0001.nii.gz", (1.0, 1.0, 3.0))
    message = refusal(["neighbours", "27", "--images", str(images), "--output", str(tmp_path / "out")])
    assert "new_0001.nii.gz is not named CASE_0000.nii.gz" in message
    assert "needs --output" in refusal(["neighbours", "27", "--images", str(images)])
    assert listing(raw) == before and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_nnunet_preprocesses_the_neighbours_as_channels_along_its_slicing_axis(nnunet_env):
    """nnU-Net's own plans slice along the shifted axis, and its preprocessed channel 0 at z is channel 1 at z-1."""
    rng = np.random.default_rng(0)
    shape = (24, 28, 6)  # SimpleITK spacing x = 4: the coarse axis is the array's last, which nnU-Net moves first
    volumes = {f"case{i}": rng.normal(100, 20, shape).astype(np.float32) for i in range(3)}
    write_raw_dataset(nnunet_env["nnUNet_raw"], 27, volumes, (4.0, 1.0, 1.0), channels=("MRI",))
    env = {**os.environ, **{name: str(folder) for name, folder in nnunet_env.items()}}
    shifted = run(["nnunet-autosam", "neighbours", "27", "-d", "28"], env, timeout=600).stdout
    assert "array axis 2 (x)" in shifted
    run(["nnUNetv2_plan_and_preprocess", "-d", "28", "-c", "2d", "-np", "1"], env, timeout=600)
    preprocessed = nnunet_env["nnUNet_preprocessed"] / "Dataset028_SourceNeighbours"
    assert json.loads((preprocessed / "nnUNetPlans.json").read_text())["transpose_forward"][0] == 2

    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    data_folder = preprocessed / "nnUNetPlans_2d"
    dataset = infer_dataset_class(str(data_folder))(str(data_folder))
    data = np.asarray(dataset.load_case("case0")[0])
    assert data.shape[0] == 3 and data.shape[1] == shape[2]  # 3 channels; the shifted axis comes first
    for z in range(1, data.shape[1]):
        assert np.corrcoef(data[0, z].ravel(), data[1, z - 1].ravel())[0, 1] > 0.999
        assert np.corrcoef(data[2, z - 1].ravel(), data[1, z].ravel())[0, 1] > 0.999
        assert abs(np.corrcoef(data[0, z].ravel(), data[1, z].ravel())[0, 1]) < 0.5  # noise: not the same slice
