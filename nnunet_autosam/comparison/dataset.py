"""The dataset a comparison runs on and its test set, checked before anything is written.

The user's dataset is only read. The comparison works in its own nnU-Net folders (``OUTPUT/nnUNet_raw``
and beside it): the dataset is linked in there as it is when it brings its test set (its own
imagesTs/labelsTs, or folders given with ``--test-images``/``--test-labels``), or derived there with
units held out (``--holdout N``, comparison/holdout.py). A dataset already in ``OUTPUT/nnUNet_raw``
(converted there, as benchmarks/few_label_acdc.py does) is used where it lies.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from nnunet_autosam.comparison.holdout import default_derived_id, read_dataset_json, short_name, source_folder
from nnunet_autosam.comparison.protocol import METHODS, ZERO_SHOT
from nnunet_autosam.data.grouping import Grouping, dataset_units
from nnunet_autosam.data.verify import complete_cases, num_channels_of
from nnunet_autosam.evaluation.metrics import list_cases
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.nnunet_paths import RAW_IMAGE_NAME

HOLDOUT, OWN_TEST_SET, TEST_FOLDERS = "holdout", "imagesTs", "folders"


@dataclass(frozen=True)
class Plan:
    """Where the comparison's dataset comes from and lies, and which test set it is scored on."""

    source: Path  # the user's dataset folder (read only)
    folder: Path  # the dataset in OUTPUT/nnUNet_raw that everything trains on
    test_kind: str  # HOLDOUT, OWN_TEST_SET or TEST_FOLDERS
    test_images: Path
    test_labels: Path

    @property
    def dataset_id(self) -> str:
        return str(int(self.folder.name[len("Dataset") : len("Dataset") + 3]))


def find_in(raw: Path, reference: str) -> Path | None:
    """The DatasetXXX_NAME folder in ``raw`` that an id or a name names, if there is one."""
    if reference.isdigit():
        found = sorted(raw.glob(f"Dataset{int(reference):03d}_*"))
        return found[0] if found else None
    return raw / reference if (raw / reference).is_dir() else None


def find_dataset(reference: str, working_raw: Path) -> Path:
    """The user's dataset: a folder, a dataset already in the working nnUNet_raw, else one in $nnUNet_raw."""
    if not Path(reference).expanduser().is_dir():
        found = find_in(working_raw, reference)
        if found is not None:
            return found.resolve() if not found.is_symlink() else found.readlink()
    return source_folder(reference)


def uses_sam(methods) -> list:
    return [m for m in methods if m == ZERO_SHOT or METHODS[m].sam_plans]


def check_labels_for_sam(source: Path, dataset_json: dict, methods) -> None:
    """What SAM's heads cannot take, named before anything runs (several channels they take: plans --channels)."""
    sam_methods = uses_sam(methods)
    if not sam_methods:
        return
    regions = [name for name, value in dataset_json.get("labels", {}).items() if isinstance(value, list)]
    if regions or dataset_json.get("regions_class_order"):
        raise InputError(
            f"{source.name} has region-based labels ({', '.join(regions) or 'regions_class_order'}), but the SAM "
            f"heads ({', '.join(sam_methods)}) predict one label per pixel: pass --methods nnunet, or convert "
            f"the labels to one integer per class"
        )


def check_test_folders(images: Path, labels: Path, dataset_json: dict) -> None:
    """Every test case with all the dataset's channels (CASE_0000 ...) and its label, no label without an image."""
    for folder, flag in ((images, "--test-images"), (labels, "--test-labels")):
        if not folder.is_dir():
            raise InputError(f"{flag} {folder} is not a folder: pass the folder of test images and of their labels")
    ending = dataset_json["file_ending"]
    channels: dict[str, set] = {}
    for stem in list_cases(images, ending):
        if match := RAW_IMAGE_NAME.fullmatch(stem):
            channels.setdefault(match["case"], set()).add(int(match["channel"]))
    image_cases, label_cases = set(channels), set(list_cases(labels, ending))
    if not image_cases or image_cases != label_cases:
        odd = sorted(image_cases ^ label_cases) or ["(none found)"]
        raise InputError(
            f"{images} and {labels} do not hold the same cases (e.g. {odd[0]}): give every CASE_0000{ending} "
            f"image its CASE{ending} label"
        )
    num_channels = num_channels_of(dataset_json)
    for case, found in sorted(channels.items()):
        missing = [channel for channel in range(num_channels) if channel not in found]
        if missing:
            raise InputError(
                f"{images / f'{case}_{missing[0]:04d}{ending}'} is missing: every test case needs all "
                f"{num_channels} channels of the dataset (CASE_0000{ending} to CASE_{num_channels - 1:04d}{ending})"
            )


def plan_dataset(args, working_raw: Path, grouping: Grouping) -> Plan:
    """Find the dataset, choose its test set and check everything the runs will need; writes nothing."""
    if args.holdout and args.test_images:
        raise InputError("--holdout and --test-images both name a test set: pass one of them")
    if bool(args.test_images) != bool(args.test_labels):
        raise InputError("--test-images and --test-labels go together: pass both folders")
    source = find_dataset(args.dataset, working_raw)
    dataset_json = read_dataset_json(source)
    missing = [key for key in ("labels", "file_ending", "channel_names") if key not in dataset_json]
    if missing:
        raise InputError(
            f"{source / 'dataset.json'} lacks {', '.join(missing)}: write nnU-Net v2's dataset.json "
            f"(nnunetv2.dataset_conversion.generate_dataset_json)"
        )
    check_labels_for_sam(source, dataset_json, args.methods)
    cases = [case.name for case in complete_cases(source, dataset_json, "Tr")]
    units = dataset_units(source, cases, grouping)
    needed = (args.holdout or 0) + args.val_patients + max(args.budgets)
    if len(units) < needed:
        raise InputError(
            f"{source.name} has {len(units)} units (patients) of labelled cases, but a test set of "
            f"{args.holdout or 0}, {args.val_patients} for validation and a budget of {max(args.budgets)} need "
            f"{needed}: lower --holdout, --val-patients or --budgets"
        )
    if args.holdout:
        derived_id = args.derived_id or default_derived_id(source)
        folder = working_raw / f"Dataset{derived_id:03d}_{short_name(source)}"
        return Plan(source, folder, HOLDOUT, folder / "imagesTs", folder / "labelsTs")
    folder = working_raw / source.name
    if args.test_images:
        images, labels = Path(args.test_images).resolve(), Path(args.test_labels).resolve()
        check_test_folders(images, labels, dataset_json)
        return Plan(source, folder, TEST_FOLDERS, images, labels)
    own_labels = source / "labelsTs"
    if not (own_labels.is_dir() and list_cases(own_labels, dataset_json["file_ending"])):
        raise InputError(
            f"{source.name} has no imagesTs/labelsTs to test on: pass --holdout N (N labelled units held out "
            f"into a derived dataset) or --test-images DIR --test-labels DIR"
        )
    complete_cases(source, dataset_json, "Ts")
    return Plan(source, folder, OWN_TEST_SET, folder / "imagesTs", folder / "labelsTs")


def test_units(plan: Plan) -> tuple[str, list]:
    """(where the test set comes from, in words; its units or cases) for the published table."""
    dataset_json = json.loads((plan.folder / "dataset.json").read_text(encoding="utf-8"))
    derived = dataset_json.get("derived_from")
    if plan.test_kind == HOLDOUT and derived:
        return f"held out of {derived['dataset']} with nnunet-autosam holdout", derived["held_out_units"]
    acdc_info = plan.folder / "acdc_info.json"
    if plan.test_kind == OWN_TEST_SET and acdc_info.is_file():
        info = json.loads(acdc_info.read_text(encoding="utf-8"))
        patients = sorted(p for p, entry in info.items() if entry["subset"] != "training")
        held_out = any(entry["subset"] == "holdout" for entry in info.values())
        return ("held out with convert-acdc --holdout" if held_out else "official testing/"), patients
    where = "the dataset's own imagesTs/labelsTs" if plan.test_kind == OWN_TEST_SET else str(plan.test_labels)
    return where, list_cases(plan.test_labels, dataset_json["file_ending"])
