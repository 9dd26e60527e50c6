"""`nnunet-autosam convert-acdc`: the official ACDC download -> an nnU-Net v2 raw dataset.

nnunetv2 2.8.x ships a Dataset027_ACDC converter that crashes (it treats ``nnUNet_raw`` as a string),
so we provide our own. Every file is checked before anything is written (complete, see
:mod:`nnunet_autosam.data.image_checks`; known labels on the image's grid), then copied byte for byte:
re-saving through an image library could round spacing, origin or direction, and copying cannot.
With ``--holdout N`` (only ACDC's training set at hand) N training patients, stratified by
pathology group with a fixed seed, become the test set instead (imagesTs/labelsTs), listed in
``acdc_info.json`` with subset ``holdout``. The dataset is assembled in a temporary sibling folder
and renamed into place at the end, so an interrupted run leaves nothing behind.
"""

import json
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from nnunet_autosam.data.grouping import ACDC_INFO_FILE, HOLDOUT_SUBSET, draw_holdout
from nnunet_autosam.data.image_checks import (
    geometry_mismatch,
    itk_warnings_off,
    require_intact,
    unexpected_label_values,
)
from nnunet_autosam.utilities.atomic import atomic_path, write_json
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.nnunet_paths import nnunet_folder, source_checkout

LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
CHANNEL_NAMES = {"0": "cineMRI"}
FILE_ENDING = ".nii.gz"
SUBSETS = ("training", "testing")
PATIENT_NAME = re.compile(r"patient\d{3}")
DATASET_NAME = re.compile(r"[A-Za-z0-9_-]+")
ACDC_ENV = "NNUNET_AUTOSAM_ACDC"  # where tests and benchmarks find ACDC


def shared_data_folder(variable: str, name: str) -> Path:
    """$``variable``, else ../shared/data/``name`` beside the source checkout (this project's data layout)."""
    if os.environ.get(variable):
        return Path(os.environ[variable])
    checkout = source_checkout() or Path.cwd()
    return checkout.parent / "shared" / "data" / name


def default_acdc_folder() -> Path:
    """$NNUNET_AUTOSAM_ACDC, else ../shared/data/acdc."""
    return shared_data_folder(ACDC_ENV, "acdc")


INFO_INT_KEYS = ("ED", "ES", "NbFrame")
INFO_FLOAT_KEYS = ("Height", "Weight")
ACDC_CITATION = (
    "Bernard et al., Deep Learning Techniques for Automatic MRI Cardiac Multi-structures "
    "Segmentation and Diagnosis: Is the Problem Solved?, IEEE TMI 37(11):2514-2525, 2018, "
    "doi:10.1109/TMI.2018.2837502"
)


@dataclass(frozen=True)
class Case:
    """One labelled (or, for testing, possibly unlabelled) ACDC frame."""

    case_id: str
    image: Path
    label: Path | None


@dataclass(frozen=True)
class Patient:
    patient_id: str
    subset: str
    info: dict
    cases: tuple[Case, ...]


def read_info_cfg(path: Path, subset: str) -> dict:
    """Parse an ACDC Info.cfg (``key: value`` lines) into typed values; ED and ES must be there."""
    if not path.is_file():
        raise InputError(f"{path.parent.name} has no Info.cfg: the ACDC folder is incomplete; download it again")
    info: dict[str, str | int | float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    required = ("ED", "ES", "Group") if subset == "training" else ("ED", "ES")
    missing = [key for key in required if key not in info]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}: the ACDC folder is damaged; download it again")
    try:
        for key in INFO_INT_KEYS:
            if key in info:
                info[key] = int(info[key])
        for key in INFO_FLOAT_KEYS:
            if key in info:
                info[key] = float(info[key])
    except ValueError as error:
        raise InputError(
            f"{path} has a malformed value ({error}): the ACDC folder is damaged; download it again"
        ) from None
    return info


def patient_cases(folder: Path, info: dict, subset: str) -> tuple[Case, ...]:
    """The ED and ES frames named in Info.cfg; their _gt labels are required for training only."""
    patient_id = folder.name
    cases = []
    for phase in ("ED", "ES"):
        case_id = f"{patient_id}_frame{info[phase]:02d}"
        image = folder / f"{case_id}{FILE_ENDING}"
        label = folder / f"{case_id}_gt{FILE_ENDING}"
        for needed in (image, label) if subset == "training" else (image,):
            if not needed.is_file():
                raise InputError(f"{patient_id} has no {needed.name}: the ACDC folder is incomplete; download it again")
        cases.append(Case(case_id, image, label if label.is_file() else None))
    return tuple(cases)


def patient_folders(acdc_dir: Path) -> dict[str, tuple[str, Path]]:
    """Map patient id -> (subset, folder) over training/ and, where present, testing/."""
    training = acdc_dir / "training"
    if not training.is_dir():
        raise InputError(
            f"{acdc_dir} has no training/ folder: pass the ACDC folder that holds "
            f"training/patientNNN/ (and optionally testing/patientNNN/), as downloaded"
        )
    folders = {}
    for subset in SUBSETS:
        subset_dir = acdc_dir / subset
        if subset_dir.is_dir():
            for folder in sorted(subset_dir.iterdir()):
                if folder.is_dir() and PATIENT_NAME.fullmatch(folder.name):
                    folders[folder.name] = (subset, folder)
    if not any(subset == "training" for subset, _ in folders.values()):
        raise InputError(
            f"{training} has no patientNNN folders: pass the ACDC folder that holds training/patientNNN/, as downloaded"
        )
    return folders


def find_patients(acdc_dir: Path, patients=None) -> list[Patient]:
    """All patients (or the requested ones), with their Info.cfg and the files of both frames."""
    folders = patient_folders(acdc_dir)
    wanted = sorted(folders) if patients is None else list(dict.fromkeys(patients))
    unknown = [patient_id for patient_id in wanted if patient_id not in folders]
    if unknown:
        raise InputError(
            f"{', '.join(unknown)} not found in {acdc_dir}: pass patient ids such as "
            f"patient001 that exist under training/ or testing/"
        )
    if not wanted:
        raise InputError("no patients requested: drop --patients or name at least one patient")
    found = []
    for patient_id in wanted:
        subset, folder = folders[patient_id]
        info = read_info_cfg(folder / "Info.cfg", subset)
        found.append(Patient(patient_id, subset, info, patient_cases(folder, info, subset)))
    return found


def check_case(case: Case) -> None:
    """Both files are complete, the label holds only known values and lies on the image's grid."""
    import SimpleITK as sitk

    for file in (case.image, case.label) if case.label else (case.image,):
        require_intact(file)
    image = sitk.ImageFileReader()
    image.SetFileName(str(case.image))
    try:
        image.ReadImageInformation()
        label = sitk.ReadImage(str(case.label)) if case.label else None
    except RuntimeError:
        raise InputError(
            f"{case.case_id}: cannot read the image or its _gt file: the file is damaged; download the ACDC data again"
        ) from None
    if label is None:
        return
    assert case.label is not None  # label was read from it
    unexpected = unexpected_label_values(label, LABELS.values())
    if unexpected:
        raise InputError(
            f"{case.label.name} has label values {unexpected} outside {sorted(LABELS.values())}: "
            f"the labels are not the ACDC ones; use an unmodified ACDC download"
        )
    mismatch = geometry_mismatch(image, label)
    if mismatch:
        raise InputError(f"{case.label.name} {mismatch}: image and label do not match; use an unmodified ACDC download")


def check_patients(patients: list[Patient]) -> None:
    """Read every frame once before writing anything, so bad input never leaves a partial dataset."""
    with itk_warnings_off():
        for patient in tqdm(patients, desc="Checking ACDC patients", unit="patient"):
            for case in patient.cases:
                check_case(case)


def dataset_json(num_training: int, name: str) -> dict:
    return {
        "channel_names": CHANNEL_NAMES,
        "labels": LABELS,
        "numTraining": num_training,
        "file_ending": FILE_ENDING,
        "name": name,
        "description": "ACDC cardiac cine-MRI, ED and ES frames (converted by nnunet-autosam convert-acdc)",
        "reference": ACDC_CITATION,
        "licence": "research use; cite Bernard et al. 2018",
    }


def acdc_info(patients: list[Patient]) -> dict:
    """Info.cfg of every patient plus its case ids and subset: the splits command stratifies on Group."""
    return {
        patient.patient_id: {
            **patient.info,
            "cases": [case.case_id for case in patient.cases],
            "subset": patient.subset,
        }
        for patient in patients
    }


def hold_out(patients: list[Patient], count: int) -> list[Patient]:
    """Move ``count`` training patients, stratified by pathology group, to the test set (grouping.draw_holdout)."""
    if count == 0:
        return patients
    if any(patient.subset != "training" for patient in patients):
        raise InputError(
            "--holdout carves a test set out of training/, but this ACDC folder has testing/ "
            "patients too: drop --holdout and use its testing/ set, or convert without testing/"
        )
    training = {
        patient.patient_id: (patient.info["Group"], [case.case_id for case in patient.cases]) for patient in patients
    }
    if not 0 < count < len(training):
        raise InputError(
            f"--holdout {count} must leave at least one of the {len(training)} training patients to "
            f"train on: pick 1 to {len(training) - 1}"
        )
    held_out = set(draw_holdout(training, count))
    return [
        replace(patient, subset=HOLDOUT_SUBSET) if patient.patient_id in held_out else patient for patient in patients
    ]


def write_dataset(patients: list[Patient], folder: Path, name: str) -> None:
    """Lay out imagesTr/labelsTr (and imagesTs/labelsTs for testing or held-out patients) plus the two json files."""
    for patient in patients:
        suffix = "Tr" if patient.subset == "training" else "Ts"
        for case in patient.cases:
            images, labels = folder / f"images{suffix}", folder / f"labels{suffix}"
            images.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(case.image, images / f"{case.case_id}_0000{FILE_ENDING}")
            if case.label:
                labels.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(case.label, labels / f"{case.case_id}{FILE_ENDING}")
    num_training = sum(len(p.cases) for p in patients if p.subset == "training")
    write_json(dataset_json(num_training, name), folder / "dataset.json", sort_keys=False)
    write_json(acdc_info(patients), folder / ACDC_INFO_FILE)


def dataset_folder(dataset_id: int, name: str, overwrite: bool) -> Path:
    """Where the dataset goes; refuses to clobber it, or to give an id a second name nnU-Net would reject."""
    if not 1 <= dataset_id <= 999:
        raise InputError(f"dataset id {dataset_id} is out of range: pick an id from 1 to 999 (-d 27)")
    if not DATASET_NAME.fullmatch(name):
        raise InputError(f"dataset name {name!r} has characters nnU-Net cannot use: use letters, digits, _ or -")
    raw = nnunet_folder("nnUNet_raw")
    target = raw / f"Dataset{dataset_id:03d}_{name}"
    others = sorted(p.name for p in raw.glob(f"Dataset{dataset_id:03d}_*") if p != target)
    if others:
        raise InputError(
            f"{raw} already holds {others[0]} with id {dataset_id}: pick another -d, or remove that folder"
        )
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists: pass --overwrite to replace it")
    return target


def convert_acdc(
    acdc_dir, dataset_id: int = 27, name: str = "ACDC", overwrite: bool = False, patients=None, holdout: int = 0
) -> Path:
    """Convert an official ACDC folder into ``$nnUNet_raw/DatasetXXX_NAME`` and return that folder.

    ``patients`` (ids such as "patient001") restricts the conversion to those patients; ``holdout``
    moves that many of them to imagesTs/labelsTs (see :func:`hold_out`).
    """
    found = hold_out(find_patients(Path(acdc_dir), patients), holdout)
    target = dataset_folder(dataset_id, name, overwrite)
    check_patients(found)
    with atomic_path(target) as tmp:
        write_dataset(found, tmp, name)
    return target


def run(args) -> None:
    target = convert_acdc(args.acdc_dir, args.dataset_id, args.name, args.overwrite, args.patients, args.holdout)
    num_training = json.loads((target / "dataset.json").read_text(encoding="utf-8"))["numTraining"]
    print(f"Wrote {target} ({num_training} training cases).")
    if args.holdout:
        info = json.loads((target / "acdc_info.json").read_text(encoding="utf-8"))
        held_out = sorted(patient for patient, entry in info.items() if entry["subset"] == HOLDOUT_SUBSET)
        print(f"Held out {len(held_out)} patients as the test set (imagesTs/labelsTs): {' '.join(held_out)}")
    print(f"Next: nnUNetv2_plan_and_preprocess -d {args.dataset_id} -c 2d")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-acdc",
        help="convert the official ACDC download into an nnU-Net v2 raw dataset",
        description="Check and copy the ACDC ED/ES frames (training/ and, where present, testing/) into "
        "$nnUNet_raw/DatasetXXX_NAME with dataset.json and acdc_info.json (Info.cfg of each "
        "patient). Files are copied byte for byte, so geometry is unchanged.",
    )
    parser.add_argument("acdc_dir", type=Path, metavar="ACDC_DIR", help="folder holding training/patientNNN/")
    parser.add_argument("-d", "--dataset-id", type=int, default=27, help="nnU-Net dataset id (default: 27)")
    parser.add_argument("--name", default="ACDC", help="dataset name after the id (default: ACDC)")
    parser.add_argument(
        "--patients",
        nargs="+",
        metavar="PATIENT",
        help="convert only these patients, e.g. patient001 patient002 (default: all)",
    )
    parser.add_argument(
        "--holdout",
        type=int,
        default=0,
        metavar="N",
        help="move N training patients (stratified by pathology group, fixed seed; listed in "
        "acdc_info.json as subset 'holdout') to imagesTs/labelsTs as a test set (default: 0)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    parser.set_defaults(func=run)
