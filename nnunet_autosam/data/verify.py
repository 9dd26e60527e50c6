"""`nnunet-autosam verify DATASET`: every file of an nnU-Net raw dataset checked, every problem listed.

nnU-Net's own ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` reads imagesTr and labelsTr
only, stops at the first check that fails, only warns when origin or direction differ, and reads a
truncated .nii.gz as if it were whole (SimpleITK fills the missing voxels with zeros). This command
checks imagesTr, labelsTr, imagesTs and labelsTs: each NIfTI file complete
(:mod:`nnunet_autosam.data.image_checks`), each case with all its channels and its label, the channels
and the label on one grid (size, spacing, origin, direction), label values among dataset.json's
labels, and ``numTraining``. It prints one line per problem, then a summary, and exits non-zero when
there is any.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nnunet_autosam.data.image_checks import geometry_mismatch, itk_warnings_off, nifti_problem, unexpected_label_values
from nnunet_autosam.evaluation.metrics import list_cases
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.nnunet_paths import RAW_IMAGE_NAME, nnunet_folder, resolve_dataset

SUBSETS = ("Tr", "Ts")


@dataclass
class Case:
    """One case of imagesTr or imagesTs: the channel files it has (in channel order) and its label, if any."""

    name: str
    images: list
    label: Path | None

    @property
    def files(self) -> list:
        return [*self.images, *([self.label] if self.label else [])]


def allowed_label_values(dataset_json: dict) -> list:
    """Every value a label file may hold: dataset.json's labels (regions included) and the ignore label."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    extra = [manager.ignore_label] if manager.has_ignore_label else []
    return sorted(int(value) for value in [*manager.all_labels, *extra])


def files_ending(folder: Path, file_ending: str) -> dict:
    """File name without the ending -> path, for the visible files of ``folder`` with that ending."""
    if not folder.is_dir():
        return {}
    return {name: folder / f"{name}{file_ending}" for name in list_cases(folder, file_ending)}


def image_channels(images_dir: Path, num_channels: int, file_ending: str, problems: list) -> dict:
    """Case name -> its channel files in channel order, for a folder of CASE_XXXX images (imagesTr, imagesTs or
    any folder nnUNetv2_predict reads); misnamed files and missing channels go to ``problems``."""
    channels: dict = {}
    for stem, path in files_ending(images_dir, file_ending).items():
        match = RAW_IMAGE_NAME.fullmatch(stem)
        if match and int(match["channel"]) < num_channels:
            channels.setdefault(match["case"], {})[int(match["channel"])] = path
        else:
            problems.append(
                f"{path} is not named CASE_XXXX{file_ending} with a channel below {num_channels}, "
                f"as dataset.json's channel_names ask"
            )
    for name, found in sorted(channels.items()):
        problems.extend(
            f"{images_dir / f'{name}_{channel:04d}{file_ending}'} is missing: case {name} has other channels"
            for channel in range(num_channels)
            if channel not in found
        )
    return {name: [found[channel] for channel in sorted(found)] for name, found in sorted(channels.items())}


def subset_cases(folder: Path, subset: str, num_channels: int, file_ending: str, problems: list) -> list:
    """The cases of imagesTr or imagesTs with their labels; missing or stray files go to ``problems``.

    Test labels are optional as in nnU-Net, but once labelsTs exists every test case needs one.
    """
    images_dir, labels_dir = folder / f"images{subset}", folder / f"labels{subset}"
    channels = image_channels(images_dir, num_channels, file_ending, problems)
    labels = files_ending(labels_dir, file_ending)
    label_required = subset == "Tr" or labels_dir.is_dir()
    cases = []
    for name, images in channels.items():
        if name not in labels and label_required:
            problems.append(f"{labels_dir / (name + file_ending)} is missing: case {name} has images")
        cases.append(Case(name, images, labels.get(name)))
    problems.extend(
        f"{path} has no image: {images_dir} holds no {name}_0000{file_ending}"
        for name, path in labels.items()
        if name not in channels
    )
    return cases


def num_channels_of(dataset_json: dict) -> int:
    return len(dataset_json.get("channel_names") or dataset_json.get("modality") or {"0": None})


def complete_cases(folder: Path, dataset_json: dict, subset: str) -> list:
    """The cases of imagesTr or imagesTs with their labels, or one line naming the first missing or stray file.

    Only names are checked (no file is read): a quick guard before a command copies or trains on the files.
    """
    problems: list[str] = []
    cases = subset_cases(folder, subset, num_channels_of(dataset_json), dataset_json["file_ending"], problems)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(f"{problems[0]}{more}: run nnunet-autosam verify {folder.name} and fix the files")
    return cases


def read_header(path: Path):
    """A SimpleITK reader holding the file's geometry, without its voxels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def case_problems(case: Case, allowed_labels: list) -> list:
    """Incomplete files, channels or label off the first channel's grid, label values outside dataset.json."""
    import SimpleITK as sitk

    problems = [f"{path} {problem}" for path in case.files if (problem := nifti_problem(path))]
    if problems:
        return problems  # SimpleITK would read what is there and zeros for the rest: nothing more to learn
    try:
        headers = [read_header(path) for path in case.images]
        label = sitk.ReadImage(str(case.label)) if case.label else None
    except RuntimeError:
        return [
            f"case {case.name}: SimpleITK cannot read {' or '.join(p.name for p in case.files)}; "
            f"check the files' format"
        ]
    others = [*zip(case.images[1:], headers[1:]), *([(case.label, label)] if label else [])]
    for path, other in others:
        mismatch = geometry_mismatch(headers[0], other, case.images[0].name)
        if mismatch:
            problems.append(f"{path} {mismatch}")
    if label is not None:
        unexpected = unexpected_label_values(label, allowed_labels)
        if unexpected:
            problems.append(
                f"{case.label} has label values {unexpected} that dataset.json does not define "
                f"(it has {allowed_labels})"
            )
    return problems


def verify_dataset(folder: Path) -> tuple[list, int]:
    """(every problem found, one line each; the number of files checked) for the raw dataset in ``folder``."""
    dataset_json_path = folder / "dataset.json"
    if not dataset_json_path.is_file():
        raise InputError(f"{dataset_json_path} not found: verify reads a raw nnU-Net dataset; convert it first")
    dataset_json = json.loads(dataset_json_path.read_text(encoding="utf-8"))
    if "labels" not in dataset_json:
        raise InputError(f"{dataset_json_path} has no 'labels': nnU-Net needs them; add them as in its documentation")
    if "dataset" in dataset_json:
        raise InputError(
            f"{dataset_json_path} lists its files under 'dataset': verify reads the imagesTr/"
            f"labelsTr/imagesTs/labelsTs folders only"
        )
    file_ending = dataset_json.get("file_ending", ".nii.gz")
    num_channels = num_channels_of(dataset_json)
    problems: list[str] = []
    cases = {subset: subset_cases(folder, subset, num_channels, file_ending, problems) for subset in SUBSETS}
    if not cases["Tr"]:
        problems.append(f"{folder / 'imagesTr'} holds no *_0000{file_ending} images: nnU-Net trains on them")
    if dataset_json.get("numTraining") != len(cases["Tr"]):
        problems.append(
            f"{dataset_json_path} says numTraining {dataset_json.get('numTraining')} but imagesTr "
            f"holds {len(cases['Tr'])} cases"
        )
    allowed = allowed_label_values(dataset_json)
    all_cases = [*cases["Tr"], *cases["Ts"]]
    with itk_warnings_off():
        for case in tqdm(all_cases, desc=f"Verifying {folder.name}", unit="case"):
            problems.extend(case_problems(case, allowed))
    return problems, sum(len(case.files) for case in all_cases)


def run(args) -> int:
    folder = nnunet_folder("nnUNet_raw") / resolve_dataset(args.dataset)
    problems, num_files = verify_dataset(folder)
    for problem in problems:
        print(problem)
    if problems:
        print(
            f"{folder.name}: {len(problems)} problem(s) in {num_files} files checked; copy truncated or "
            f"corrupt files again and fix the others before planning"
        )
        return 1
    print(f"{folder.name}: all {num_files} files complete, on their images' grids, with known labels")
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check every file of a raw dataset: complete, on one grid, known labels",
        description="Check imagesTr, labelsTr, imagesTs and labelsTs of $nnUNet_raw/DatasetXXX: every NIfTI file "
        "complete (gzip stream and voxel data), every case with all channels and its label on one "
        "grid, label values defined in dataset.json. Lists every problem; exits 1 if there is any.",
    )
    parser.add_argument("dataset", metavar="DATASET", help="dataset id (27) or name (Dataset027_ACDC)")
    parser.set_defaults(func=run)
