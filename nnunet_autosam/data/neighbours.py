"""`nnunet-autosam neighbours`: a derived 2.5D raw dataset whose three channels are each slice and its neighbours.

A 2D SAM encoder sees one slice; 2.5D gives it the slice and its two neighbours along nnU-Net's 2d
slicing axis as three channels. Doing that in a derived raw dataset, rather than inside a trainer,
means stock nnU-Net plans, preprocesses, trains, validates and predicts on exactly this input with no
change to nnU-Net: channel 0 holds slice z-1, channel 1 slice z (the source), channel 2 slice z+1. At
the first and last slice the missing neighbour is the edge slice itself (replicate), so every slice has
three channels and the edge slices see no invented intensities.

The slicing axis is the raw array axis (SimpleITK's numpy order z, y, x) that nnU-Net's 2d
configuration slices along: ``transpose_forward[0]`` of the source's nnUNetPlans.json where it has
been planned, else the axis of the largest median spacing, as nnU-Net's planner picks it. Labels are
linked (or copied) unchanged, images keep their dtype and geometry, and the dataset is written under a
temporary name and renamed at the end, so an interrupted run leaves nothing half-written.
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_autosam.comparison.holdout import read_dataset_json, short_name, source_folder
from nnunet_autosam.data.conversion import dataset_folder
from nnunet_autosam.data.grouping import ACDC_INFO_FILE, UNITS_FILE
from nnunet_autosam.data.image_checks import itk_warnings_off, require_intact
from nnunet_autosam.data.verify import SUBSETS, complete_cases, num_channels_of, read_header
from nnunet_autosam.utilities.atomic import atomic_path, write_json
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.nnunet_paths import RAW_IMAGE_NAME, nnunet_folder

NEIGHBOUR_OFFSETS = (-1, 0, 1)  # channel c holds source slice z + NEIGHBOUR_OFFSETS[c]
EDGES = "replicate"
PLANS_FILE = "nnUNetPlans.json"
GROUPING_FILES = (ACDC_INFO_FILE, UNITS_FILE)  # the units a dataset records: the derived one keeps them
ARRAY_AXES = ("z", "y", "x")  # SimpleITK's numpy array order


@dataclass(frozen=True)
class SlicingAxis:
    """The raw array axis nnU-Net's 2d configuration slices along, and why it is that one."""

    axis: int
    reason: str


def plans_file(source: Path) -> Path | None:
    """The source's nnUNetPlans.json in $nnUNet_preprocessed, or None when it has not been planned."""
    try:
        plans = nnunet_folder("nnUNet_preprocessed") / source.name / PLANS_FILE
    except InputError:
        return None
    return plans if plans.is_file() else None


def require_simpleitk_io(dataset_json: dict, source: Path) -> None:
    """The axis and the shift assume nnU-Net reads the images as SimpleITK does (array order z, y, x)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    try:
        reader = determine_reader_writer_from_dataset_json(dataset_json, verbose=False)
    except RuntimeError:
        reader = None
    if reader is not SimpleITKIO:
        raise InputError(
            f"{source.name} is read by nnU-Net with {getattr(reader, '__name__', 'no known reader')}, not SimpleITKIO: "
            f"neighbours handles 3D volumes that nnU-Net reads with SimpleITK (.nii.gz, .nrrd, .mha); convert them"
        )


def require_volume(header, path: Path) -> None:
    """One-channel 3D images only: a 2D image (or a single slice) has no neighbours to stack."""
    if header.GetNumberOfComponents() != 1:
        raise InputError(
            f"{path} has {header.GetNumberOfComponents()} components per voxel: neighbours stacks "
            f"single-channel volumes; split the channels first"
        )
    if header.GetDimension() != 3 or 1 in header.GetSize():
        raise InputError(
            f"{path} is a 2D image (size {header.GetSize()}): a single slice has no neighbours; "
            f"train on it as it is, with one channel"
        )


def median_spacing_axis(images: list) -> SlicingAxis:
    """nnU-Net's ExperimentPlanner.determine_transpose: the axis of the largest median spacing.

    Its anisotropy rule lowers that axis' target spacing but never below the others', so the argmax of
    the median (ties: the first axis, as np.argmax) is its choice. Only headers are read.
    """
    if not images:
        raise InputError("the source has no training images to take the spacing from: convert its imagesTr first")
    spacings = []
    for path in images:
        header = read_header(path)
        require_volume(header, path)
        spacings.append(header.GetSpacing()[::-1])  # SimpleITK's spacing is x, y, z; the array is z, y, x
    median = np.median(np.abs(np.array(spacings)), axis=0)
    axis = int(np.argmax(median))
    shown = ", ".join(f"{value:g}" for value in median)
    return SlicingAxis(
        axis, f"largest median spacing ({shown}) of {len(images)} training images, as nnU-Net's planner picks it"
    )


def slicing_axis(source: Path, training_images: list) -> SlicingAxis:
    """The axis to shift along: from the source's plans where present, else from its spacing."""
    plans = plans_file(source)
    if plans is None:
        return median_spacing_axis(training_images)
    try:
        transpose_forward = json.loads(plans.read_text(encoding="utf-8"))["transpose_forward"]
        axis = int(transpose_forward[0])
    except (ValueError, KeyError, IndexError, TypeError):
        raise InputError(
            f"{plans} has no valid transpose_forward: plan {source.name} again or remove the file"
        ) from None
    if axis not in range(3):
        raise InputError(f"{plans} has transpose_forward {transpose_forward}: plan {source.name} again")
    return SlicingAxis(axis, f"transpose_forward {transpose_forward} in {plans}")


def neighbour_volumes(volume: np.ndarray, axis: int) -> list:
    """Channel c: ``volume`` with slice z replaced by slice z + NEIGHBOUR_OFFSETS[c], edges replicated."""
    slices = np.arange(volume.shape[axis])
    return [np.take(volume, np.clip(slices + offset, 0, slices[-1]), axis=axis) for offset in NEIGHBOUR_OFFSETS]


def write_neighbours(image_path: Path, output_folder: Path, case: str, file_ending: str, axis: int) -> None:
    """CASE_0000..CASE_0002 of one source image, each with the source's geometry and dtype."""
    import SimpleITK as sitk

    require_intact(image_path)
    require_volume(read_header(image_path), image_path)
    image = sitk.ReadImage(str(image_path))
    for channel, volume in enumerate(neighbour_volumes(sitk.GetArrayViewFromImage(image), axis)):
        shifted = sitk.GetImageFromArray(volume)
        shifted.CopyInformation(image)
        sitk.WriteImage(shifted, str(output_folder / f"{case}_{channel:04d}{file_ending}"), useCompression=True)


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link costs no space and keeps the bytes; across filesystems fall back to a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def source_description(source: Path) -> tuple[dict, str]:
    """(dataset.json, its one channel's name) of a source neighbours can stack."""
    dataset_json = read_dataset_json(source)
    if num_channels_of(dataset_json) != 1:
        raise InputError(
            f"{source.name} has {num_channels_of(dataset_json)} channels: neighbours stacks the slices of a "
            f"single-channel dataset; derive one per channel or use the dataset as it is"
        )
    require_simpleitk_io(dataset_json, source)
    channel_name = (dataset_json.get("channel_names") or dataset_json.get("modality") or {"0": "image"})["0"]
    return dataset_json, channel_name


def derived_description(dataset_json: dict, channel_name: str, source: Path, axis: SlicingAxis) -> dict:
    """The source's dataset.json with three channels of its channel's name (nnU-Net normalises by name)."""
    derived = {key: value for key, value in dataset_json.items() if key != "modality"}
    derived["channel_names"] = {str(channel): channel_name for channel in range(len(NEIGHBOUR_OFFSETS))}
    derived["derived_from"] = {
        "dataset": source.name,
        "folder": str(source),
        "neighbours_axis": axis.axis,
        "neighbours_offsets": list(NEIGHBOUR_OFFSETS),
        "edges": EDGES,
        **({"source_derived_from": dataset_json["derived_from"]} if "derived_from" in dataset_json else {}),
    }
    return derived


def derive_neighbours(source: Path, dataset_id: int, name: str | None = None, overwrite: bool = False) -> Path:
    """Write the 2.5D dataset (see the module docstring) into $nnUNet_raw and return its folder."""
    dataset_json, channel_name = source_description(source)
    ending = dataset_json["file_ending"]
    cases = {subset: complete_cases(source, dataset_json, subset) for subset in SUBSETS}
    target = dataset_folder(dataset_id, name or f"{short_name(source)}Neighbours", overwrite)
    if target.resolve() == source.resolve():
        raise InputError(f"the derived dataset would replace {source}: pick another id with -d")
    with itk_warnings_off():
        axis = slicing_axis(source, [case.images[0] for case in cases["Tr"]])
        print(f"Shifting along array axis {axis.axis} ({ARRAY_AXES[axis.axis]}): {axis.reason}")
        with atomic_path(target) as tmp:
            all_cases = [(subset, case) for subset in SUBSETS for case in cases[subset]]
            for subset, case in tqdm(all_cases, desc=f"Deriving {target.name}", unit="case"):
                images = tmp / f"images{subset}"
                images.mkdir(parents=True, exist_ok=True)
                write_neighbours(case.images[0], images, case.name, ending, axis.axis)
                if case.label is not None:
                    labels = tmp / f"labels{subset}"
                    labels.mkdir(parents=True, exist_ok=True)
                    link_or_copy(case.label, labels / case.label.name)
            for grouping_file in GROUPING_FILES:
                if (source / grouping_file).is_file():
                    shutil.copyfile(source / grouping_file, tmp / grouping_file)
            write_json(
                derived_description(dataset_json, channel_name, source, axis), tmp / "dataset.json", sort_keys=False
            )
    return target


def is_first_channel_image(path: Path, file_ending: str) -> bool:
    """Named CASE_0000<ending>, as the images of a single-channel dataset are for nnUNetv2_predict."""
    match = RAW_IMAGE_NAME.fullmatch(path.name.removesuffix(file_ending)) if path.name.endswith(file_ending) else None
    return path.is_file() and match is not None and match["channel"] == "0000"


def images_to_predict(images_dir: Path, file_ending: str) -> dict:
    """Case -> image of a folder for nnUNetv2_predict -i, refusing files not named CASE_0000<ending>."""
    if not images_dir.is_dir():
        raise InputError(f"{images_dir} is not a folder: pass the folder of CASE_0000{file_ending} images to predict")
    visible = sorted(path for path in images_dir.iterdir() if not path.name.startswith("."))
    strays = [path for path in visible if not is_first_channel_image(path, file_ending)]
    if strays:
        raise InputError(
            f"{strays[0]} is not named CASE_0000{file_ending} as nnU-Net's raw images of a "
            f"single-channel dataset are: rename or remove it"
        )
    if not visible:
        raise InputError(f"{images_dir} holds no CASE_0000{file_ending} images: pass the folder of images to predict")
    return {path.name.removesuffix(f"_0000{file_ending}"): path for path in visible}


def shift_images(source: Path, images_dir: Path, output_dir: Path, overwrite: bool = False) -> Path:
    """The same three channels for a folder of images to predict, along the source's slicing axis."""
    dataset_json, _ = source_description(source)
    ending = dataset_json["file_ending"]
    images = images_to_predict(images_dir, ending)
    if output_dir.resolve() == images_dir.resolve():
        raise InputError(f"--output {output_dir} is the --images folder: pass another --output")
    if output_dir.exists() and not overwrite and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise InputError(f"{output_dir} already exists: pass --overwrite to replace it, or another --output")
    training_images = [case.images[0] for case in complete_cases(source, dataset_json, "Tr")]
    with itk_warnings_off():
        axis = slicing_axis(source, training_images)
        print(f"Shifting along array axis {axis.axis} ({ARRAY_AXES[axis.axis]}): {axis.reason}")
        with atomic_path(output_dir) as tmp:
            tmp.mkdir()
            for case, path in tqdm(sorted(images.items()), desc=f"Shifting {images_dir.name}", unit="case"):
                write_neighbours(path, tmp, case, ending, axis.axis)
    return output_dir


def run(args) -> None:
    source = source_folder(args.source)
    if args.images is not None:
        if args.output is None or args.dataset_id is not None:
            raise InputError("--images needs --output OUT_DIR and no -d: the shifted images go to a folder")
        output = shift_images(source, args.images, args.output, args.overwrite)
        print(f"Wrote {output}: the images of {args.images} as 3 channels (slice z-1, z, z+1)")
        print(f"Next: nnUNetv2_predict -i {output} -o PREDICTIONS -d DERIVED_ID -c 2d ...")
        return
    if args.dataset_id is None or args.output is not None:
        raise InputError("pass -d NEW_ID for a derived dataset, or --images IN_DIR --output OUT_DIR")
    target = derive_neighbours(source, args.dataset_id, args.name, args.overwrite)
    print(f"Wrote {target}: {source.name} with each slice and its neighbours as 3 channels")
    print(f"Next: nnUNetv2_plan_and_preprocess -d {args.dataset_id} -c 2d")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "neighbours",
        help="a 2.5D dataset: each slice and its two neighbours along nnU-Net's 2d slicing axis as 3 channels",
        description="Write $nnUNet_raw/DatasetXXX_NAME from a single-channel raw dataset: channel 0 holds slice z-1, "
        "channel 1 slice z, channel 2 slice z+1 along the axis nnU-Net's 2d configuration slices (transpose_forward[0] "
        "of the source's nnUNetPlans.json, else its largest median spacing); the edge slice stands in for the missing "
        "neighbour. Labels are unchanged. With --images, shift a folder of images to predict instead.",
    )
    parser.add_argument("source", metavar="SOURCE", help="single-channel dataset: id, DatasetXXX_NAME or a folder")
    parser.add_argument("-d", "--dataset-id", type=int, metavar="NEW_ID", help="id of the derived dataset")
    parser.add_argument("--name", help="name of the derived dataset (default: the source's name + Neighbours)")
    parser.add_argument("--images", type=Path, metavar="IN_DIR", help="a folder of CASE_0000 images to predict")
    parser.add_argument("--output", type=Path, metavar="OUT_DIR", help="where --images' shifted images go")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing derived dataset or --output")
    parser.set_defaults(func=run)
