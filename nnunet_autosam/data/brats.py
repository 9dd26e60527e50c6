"""`nnunet-autosam convert-brats`: the BraTS 2015 sample (FLAIR and T1c, 6 cases) -> an nnU-Net v2 raw dataset.

The source is DeepMedic's example copy of BraTS 2015 training cases
(``brats2015TrainingData/{train,validation,test}/brats_2013_patNNNN_1/``): each channel already z-scored
inside the brain, with the labels stored as floats. Every case goes to imagesTr (FLAIR as _0000, T1c as
_0001; DeepMedic's train/validation/test split is not kept: ``compare --holdout`` makes the test set),
the labels as uint8.

The brain mask is used once, on the images: outside it the source holds one constant per case and
channel (the z-score of 0), which we set to 0, as BraTS's own files have it. Why: nnU-Net crops each case
to its nonzero region; with a constant background nothing is cropped and its planner z-scores over the
whole volume, background included. With 0 outside the brain the crop keeps about a third of the volume,
so the planner sets ``use_mask_for_norm`` and z-scores inside the brain (its own rule: median size after
cropping below 3/4; ``nnUNetv2_plan_experiment`` on the converted sample sets it for both channels). A
few voxels labelled tumour lie outside the mask; they hold the background constant in the source
already, so nothing is lost.

The labels are BraTS's plain classes (1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing tumour), one
integer per voxel. BraTS's own evaluation scores regions (whole tumour, tumour core, enhancing tumour);
this dataset does not train or score those, because the SAM heads predict one label per pixel and
``compare`` refuses region-based labels for them.

License: CC BY-NC-SA 3.0 (research use). The converted dataset is derived data under the same license.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nnunet_autosam.data.conversion import dataset_folder, shared_data_folder
from nnunet_autosam.data.image_checks import (
    geometry_mismatch,
    itk_warnings_off,
    require_intact,
    unexpected_label_values,
)
from nnunet_autosam.utilities.atomic import atomic_path, write_json
from nnunet_autosam.utilities.errors import InputError

BRATS_ENV = "NNUNET_AUTOSAM_BRATS"  # where tests find the sample
DATASET_NAME = "BraTS2015Sample"
TRAINING_FOLDER = "brats2015TrainingData"
SUBSETS = ("train", "validation", "test")
CASE_FOLDER = re.compile(r"brats_\d{4}_(?P<case>pat\d{4})_\d+")
CHANNEL_FILES = ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz")
CHANNEL_NAMES = {"0": "FLAIR", "1": "T1c"}
LABEL_FILE = "OTMultiClass.nii.gz"
MASK_FILE = "brainmask.nii.gz"
LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non-enhancing tumor": 3, "enhancing tumor": 4}
FILE_ENDING = ".nii.gz"
BRATS_REFERENCE = (
    "Menze et al., The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS), IEEE TMI 34(10):1993-2024, "
    "2015, doi:10.1109/TMI.2014.2377694; sample from github.com/deepmedic/deepmedic examples"
)


def default_brats_folder() -> Path:
    """$NNUNET_AUTOSAM_BRATS, else ../shared/data/brats2015_sample."""
    return shared_data_folder(BRATS_ENV, "brats2015_sample")


@dataclass(frozen=True)
class Case:
    case_id: str
    folder: Path

    @property
    def files(self) -> list:
        return [self.folder / name for name in (*CHANNEL_FILES, LABEL_FILE, MASK_FILE)]


def find_cases(source: Path) -> list[Case]:
    """Every case folder under brats2015TrainingData/{train,validation,test}, each with its four files."""
    training = source / TRAINING_FOLDER
    if not training.is_dir():
        raise InputError(
            f"{source} has no {TRAINING_FOLDER}/ folder: pass the folder that holds "
            f"{TRAINING_FOLDER}/{{train,validation,test}}/brats_2013_patNNNN_1/"
        )
    cases: dict[str, Case] = {}
    for subset in SUBSETS:
        for folder in sorted((training / subset).glob("brats_*")) if (training / subset).is_dir() else []:
            match = CASE_FOLDER.fullmatch(folder.name)
            if not (match and folder.is_dir()):
                continue
            if match["case"] in cases:
                raise InputError(
                    f"{match['case']} is in two folders ({cases[match['case']].folder}, {folder}): keep one"
                )
            cases[match["case"]] = Case(match["case"], folder)
    if not cases:
        raise InputError(
            f"{training} holds no brats_2013_patNNNN_1 case folders under {', '.join(SUBSETS)}: pass the "
            f"BraTS 2015 sample folder as distributed"
        )
    for case in cases.values():
        for file in case.files:
            if not file.is_file():
                raise InputError(
                    f"{case.folder.name} has no {file.name}: the BraTS folder is incomplete; copy it again"
                )
    return sorted(cases.values(), key=lambda case: case.case_id)


def tumour_slab(label, slices: int) -> slice:
    """The ``slices`` axial slices centred on the tumour (the mean z of its voxels), kept inside the volume."""
    import numpy as np
    import SimpleITK as sitk

    depth = label.GetSize()[2]
    if slices >= depth:
        return slice(0, depth)
    z = np.nonzero(sitk.GetArrayViewFromImage(label))[0]
    centre = int(round(z.mean())) if z.size else depth // 2
    start = min(max(centre - slices // 2, 0), depth - slices)
    return slice(start, start + slices)


def convert_case(case: Case, images: Path, labels: Path, slices: int | None = None) -> None:
    """Check one case (complete files, one grid, labels 0-4) and write its channels and its uint8 label
    (only the ``slices`` axial slices around the tumour, where given)."""
    import SimpleITK as sitk

    for file in case.files:
        require_intact(file)
    try:
        channels = [sitk.ReadImage(str(case.folder / name)) for name in CHANNEL_FILES]
        label, mask = (sitk.ReadImage(str(case.folder / name)) for name in (LABEL_FILE, MASK_FILE))
    except RuntimeError:
        raise InputError(f"{case.folder.name}: SimpleITK cannot read its files; copy the BraTS folder again") from None
    for name, other in zip((*CHANNEL_FILES[1:], LABEL_FILE, MASK_FILE), (*channels[1:], label, mask)):
        mismatch = geometry_mismatch(channels[0], other, CHANNEL_FILES[0])
        if mismatch:
            raise InputError(f"{case.folder.name}/{name} {mismatch}: use the BraTS files as distributed")
    unexpected = unexpected_label_values(label, LABELS.values())
    if unexpected:
        raise InputError(
            f"{case.folder.name}/{LABEL_FILE} has label values {unexpected} outside {sorted(LABELS.values())}: "
            f"the labels are not BraTS's; use the files as distributed"
        )
    brain = mask > 0
    slab = tumour_slab(label, slices) if slices else slice(None)
    for channel, image in enumerate(channels):
        with atomic_path(images / f"{case.case_id}_{channel:04d}{FILE_ENDING}") as tmp:
            sitk.WriteImage(sitk.Mask(image, brain)[:, :, slab], str(tmp), True)
    with atomic_path(labels / f"{case.case_id}{FILE_ENDING}") as tmp:
        sitk.WriteImage(sitk.Cast(label, sitk.sitkUInt8)[:, :, slab], str(tmp), True)


def dataset_json(num_training: int) -> dict:
    return {
        "channel_names": CHANNEL_NAMES,
        "labels": LABELS,
        "numTraining": num_training,
        "file_ending": FILE_ENDING,
        "name": DATASET_NAME,
        "description": "BraTS 2015 sample (DeepMedic's examples), FLAIR and T1c, zero outside the brain mask; "
        "plain labels, not BraTS's regions (converted by nnunet-autosam convert-brats)",
        "reference": BRATS_REFERENCE,
        "licence": "CC BY-NC-SA 3.0",
    }


def convert_brats(source, dataset_id: int, overwrite: bool = False, slices: int | None = None) -> Path:
    """Convert the BraTS 2015 sample into ``$nnUNet_raw/DatasetXXX_BraTS2015Sample`` and return that folder.

    ``slices``: keep only that many axial slices per case, centred on its tumour; a frozen SAM encoder costs
    about a second per slice on a CPU, so tests and CPU-sized experiments take a slab, not 155 slices."""
    if slices is not None and slices < 1:
        raise InputError(f"--slices {slices} keeps no slice: pass a positive number, e.g. --slices 24")
    cases = find_cases(Path(source))
    target = dataset_folder(dataset_id, DATASET_NAME, overwrite)
    with atomic_path(target) as tmp, itk_warnings_off():
        images, labels = tmp / "imagesTr", tmp / "labelsTr"
        images.mkdir(parents=True)
        labels.mkdir()
        for case in tqdm(cases, desc="Converting BraTS cases", unit="case"):
            convert_case(case, images, labels, slices)
        write_json(dataset_json(len(cases)), tmp / "dataset.json", sort_keys=False)
    return target


def run(args) -> None:
    target = convert_brats(args.source, args.dataset_id, args.overwrite, args.slices)
    print(f"Wrote {target} ({len(list((target / 'labelsTr').iterdir()))} training cases, channels FLAIR and T1c).")
    print(f"Next: nnUNetv2_plan_and_preprocess -d {args.dataset_id} -c 2d, or nnunet-autosam compare {args.dataset_id}")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-brats",
        help="convert the BraTS 2015 sample (FLAIR, T1c; 6 cases) into an nnU-Net v2 raw dataset",
        description="Check and write every case of the BraTS 2015 sample into $nnUNet_raw/DatasetXXX_BraTS2015Sample: "
        "imagesTr CASE_0000 (FLAIR) and CASE_0001 (T1c), zero outside the brain mask; labelsTr with the plain "
        "labels 0-4 as uint8 (not BraTS's regions); dataset.json.",
    )
    parser.add_argument(
        "source",
        type=Path,
        metavar="SOURCE_FOLDER",
        help=f"folder holding {TRAINING_FOLDER}/{{train,validation,test}}/",
    )
    parser.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset id")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    parser.add_argument(
        "--slices",
        type=int,
        metavar="N",
        help="keep only N axial slices per case, centred on its tumour (default: all 155)",
    )
    parser.set_defaults(func=run)
