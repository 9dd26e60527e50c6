"""`nnunet-autosam evaluate`: Dice, IoU and surface distances in mm for a folder of predictions.

Dice, IoU, TP/FP/FN/TN, n_pred and n_ref come from nnU-Net's own ``compute_metrics``, so they agree
with ``nnUNetv2_evaluate_folder``. Each case and label also gets ``ASSD_mm`` and ``HD95_mm``
(medpy, 6-connected surfaces, computed in 3D on the whole volume with the reference image's spacing,
in mm). The JSON keeps nnU-Net's summary.json structure ("metric_per_case", "mean",
"foreground_mean") with the two extra metrics beside Dice; a CSV beside it has one row per case
and label. Voxels of the dataset's ignore label (if any) are left out of the predicted masks for
the distances, as nnU-Net leaves them out of TP/FP.

Conventions for empty masks (per case and label):

- both empty: Dice and IoU are NaN (nnU-Net's convention) and so are ASSD and HD95. Means are
  NaN-means, so a structure that is correctly absent neither helps nor hurts.
- exactly one empty (a missed or a hallucinated structure): Dice 0, and ASSD = HD95 = the diagonal
  of the image's field of view in mm (shape times spacing), a distance no two surfaces inside the
  image can exceed. The case then counts as the worst possible result while the means stay finite;
  dropping it would reward a model for missing a structure entirely.
"""

import csv
import json
import multiprocessing
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from medpy.metric.binary import assd, hd95
from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import (
    compute_metrics,
    label_or_region_to_key,
    region_or_label_to_mask,
    save_summary_json,
)
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.utilities.json_export import recursive_fix_for_json_export
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from tqdm import tqdm

from nnunet_autosam.data.image_checks import require_intact
from nnunet_autosam.utilities.atomic import atomic_path
from nnunet_autosam.utilities.errors import InputError

DEFAULT_FILE_ENDING = ".nii.gz"
DEFAULT_SUMMARY_NAME = "summary_evaluate.json"  # the command that wrote it; not summary.json, which is nnU-Net's
DISTANCE_METRICS = ("ASSD_mm", "HD95_mm")
CSV_METRICS = ("Dice", "IoU", *DISTANCE_METRICS, "TP", "FP", "FN", "TN", "n_pred", "n_ref")


def labels_from_dataset_json(dataset_json: dict):
    """Foreground labels (or regions) and the ignore label, read the way nnU-Net reads them."""
    manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    labels = manager.foreground_regions if manager.has_regions else manager.foreground_labels
    return list(labels), manager.ignore_label


def labels_found_in(reference_files) -> list:
    """The union of foreground values in the references, for folders without a dataset.json."""
    found: set[int] = set()
    for file in reference_files:
        segmentation, _ = SimpleITKIO().read_seg(str(file))
        found.update(int(value) for value in np.unique(segmentation))
    return sorted(found - {0})


def list_cases(gt_dir: Path, file_ending: str) -> list:
    """Case names (file names without the ending) of the references in ``gt_dir``."""
    return sorted(
        path.name[: -len(file_ending)]
        for path in gt_dir.iterdir()
        if path.name.endswith(file_ending) and not path.name.startswith(".")
    )


def missing_predictions(pred_dir: Path, cases, file_ending: str = DEFAULT_FILE_ENDING) -> list:
    """The cases that have no prediction file in ``pred_dir``."""
    return [case for case in cases if not (Path(pred_dir) / f"{case}{file_ending}").is_file()]


def read_segmentation(file: Path):
    """Label array (z, y, x) and its spacing in the same axis order (SimpleITK reports x, y, z)."""
    segmentation, properties = SimpleITKIO().read_seg(str(file))
    return segmentation[0], np.asarray(properties["spacing"], dtype=float)


def crop_to_union(pred_mask: np.ndarray, ref_mask: np.ndarray):
    """Both masks cut to their joint bounding box plus one voxel (where the image has it).

    Surface distances only involve voxels inside that box, and the one-voxel margin keeps medpy's
    surface extraction unchanged, so the result is exact while the distance transform gets much cheaper.
    """
    occupied = np.argwhere(pred_mask | ref_mask)
    low = np.maximum(occupied.min(axis=0) - 1, 0)
    high = occupied.max(axis=0) + 2
    box = tuple(slice(start, stop) for start, stop in zip(low, high))
    return pred_mask[box], ref_mask[box]


def surface_distances_mm(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: np.ndarray):
    """(ASSD, HD95) in mm, following the empty-mask conventions in the module docstring."""
    pred_empty, ref_empty = not pred_mask.any(), not ref_mask.any()
    if pred_empty and ref_empty:
        return np.nan, np.nan
    if pred_empty or ref_empty:
        diagonal = float(np.linalg.norm(np.asarray(ref_mask.shape) * spacing))
        return diagonal, diagonal
    pred_mask, ref_mask = crop_to_union(pred_mask, ref_mask)
    return (
        float(assd(pred_mask, ref_mask, voxelspacing=spacing)),
        float(hd95(pred_mask, ref_mask, voxelspacing=spacing)),
    )


def image_size(file: Path) -> tuple:
    """The image size (x, y, z) from the file's header, without reading the voxels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    reader.ReadImageInformation()
    return reader.GetSize()


def check_shapes_match(pairs) -> None:
    """Fail before the slow part, naming the first case whose prediction is on another grid."""
    for pred_file, ref_file in pairs:
        pred_size, ref_size = image_size(pred_file), image_size(ref_file)
        if pred_size != ref_size:
            raise InputError(
                f"case {ref_file.name}: prediction size {pred_size} differs from reference size "
                f"{ref_size} (x, y, z); predict on the reference's image grid"
            )


def evaluate_case(pred_file: Path, ref_file: Path, labels, ignore_label=None) -> dict:
    """nnU-Net's per-case metrics for one case, plus ASSD and HD95 per label."""
    prediction, _ = read_segmentation(pred_file)
    reference, spacing = read_segmentation(ref_file)
    result = compute_metrics(str(ref_file), str(pred_file), SimpleITKIO(), labels, ignore_label)
    keep = reference != ignore_label if ignore_label is not None else np.ones_like(reference, dtype=bool)
    for label in labels:
        pred_mask = region_or_label_to_mask(prediction, label) & keep
        ref_mask = region_or_label_to_mask(reference, label)
        distances = surface_distances_mm(pred_mask, ref_mask, spacing)
        result["metrics"][label].update(zip(DISTANCE_METRICS, distances))
    recursive_fix_for_json_export(result)
    return result


def _evaluate_case_task(task):
    """Pool.imap hands each worker one argument."""
    return evaluate_case(*task)


def mean_metrics(per_case: list, labels):
    """Per-label NaN-means over cases and their mean over foreground labels, as nnU-Net computes them."""
    metric_names = list(per_case[0]["metrics"][labels[0]])
    with warnings.catch_warnings():  # a label that is NaN in every case has a NaN mean, which is the point
        warnings.simplefilter("ignore", RuntimeWarning)
        means = {
            label: {
                name: float(np.nanmean([case["metrics"][label][name] for case in per_case])) for name in metric_names
            }
            for label in labels
        }
        foreground_mean = {
            name: float(np.mean([means[label][name] for label in labels if label != 0])) for name in metric_names
        }
    return means, foreground_mean


def write_summary(summary: dict, output_file: Path) -> Path:
    """Write the summary JSON (nnU-Net's layout) and a CSV beside it; returns the CSV's path."""
    with atomic_path(output_file) as tmp:
        save_summary_json(summary, str(tmp))
    csv_file = output_file.with_suffix(".csv")
    with atomic_path(csv_file) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "label", *CSV_METRICS, "prediction_file", "reference_file"])
        for case in summary["metric_per_case"]:
            name = Path(case["reference_file"]).name
            for label, metrics in case["metrics"].items():
                writer.writerow(
                    [
                        name,
                        label_or_region_to_key(label),
                        *(metrics[m] for m in CSV_METRICS),
                        case["prediction_file"],
                        case["reference_file"],
                    ]
                )
    return csv_file


def case_files(pred_dir: Path, gt_dir: Path, cases, file_ending: str):
    """(prediction files, reference files) of ``cases``, failing with the first few that lack a file."""
    for folder, what in ((pred_dir, "prediction"), (gt_dir, "reference")):
        if not folder.is_dir():
            raise InputError(f"{what} folder {folder} does not exist; pass the folder holding the *{file_ending} files")
    cases = list_cases(gt_dir, file_ending) if cases is None else sorted(cases)
    if not cases:
        raise InputError(
            f"no *{file_ending} references in {gt_dir}; pass the folder with the ground truth (or set --file-ending)"
        )
    missing = missing_predictions(pred_dir, cases, file_ending)
    if missing:
        raise InputError(
            f"{len(missing)} of {len(cases)} cases have no prediction in {pred_dir} "
            f"(e.g. {', '.join(missing[:3])}); predict them, or evaluate against a reference "
            f"folder holding only the predicted cases"
        )
    ref_files = [gt_dir / f"{case}{file_ending}" for case in cases]
    missing_refs = [file.name for file in ref_files if not file.is_file()]
    if missing_refs:
        raise InputError(f"no reference for {', '.join(missing_refs[:3])} in {gt_dir}; check the case names")
    return [pred_dir / f"{case}{file_ending}" for case in cases], ref_files


def default_labels(gt_dir: Path, ref_files):
    """(labels, ignore label) from ``gt_dir/../dataset.json``, else the foreground values found."""
    dataset_json = gt_dir.parent / "dataset.json"
    if dataset_json.is_file():
        return labels_from_dataset_json(json.loads(dataset_json.read_text(encoding="utf-8")))
    return labels_found_in(ref_files), None


def evaluate_folder(
    pred_dir,
    gt_dir,
    labels=None,
    output_file=None,
    num_processes: int = default_num_processes,
    cases=None,
    file_ending: str = DEFAULT_FILE_ENDING,
    ignore_label=None,
) -> dict:
    """Evaluate the predictions of ``cases`` (default: every reference in ``gt_dir``) against their references.

    Every prediction and reference must be a complete file (:func:`require_intact`) before any is scored.

    ``labels`` defaults to the foreground labels of ``gt_dir/../dataset.json`` (with its ignore label),
    else to the foreground values found in the references. Returns nnU-Net's summary dict (label keys
    as ints or region tuples) and writes it, plus a CSV, when ``output_file`` is given.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    pred_files, ref_files = case_files(pred_dir, gt_dir, cases, file_ending)
    for file in (*pred_files, *ref_files):  # SimpleITK would read a truncated file as zeros and score it
        require_intact(file)
    if labels is None:
        labels, ignore_label = default_labels(gt_dir, ref_files)
    if not labels:
        raise InputError(f"no foreground labels to evaluate in {gt_dir}; pass them with -l")
    check_shapes_match(zip(pred_files, ref_files))

    tasks = [(pred_file, ref_file, list(labels), ignore_label) for pred_file, ref_file in zip(pred_files, ref_files)]
    with multiprocessing.Pool(max(1, min(num_processes, len(tasks)))) as pool:
        per_case = list(tqdm(pool.imap(_evaluate_case_task, tasks), total=len(tasks), desc="evaluating", unit="case"))
    means, foreground_mean = mean_metrics(per_case, list(labels))
    summary = {"metric_per_case": per_case, "mean": means, "foreground_mean": foreground_mean}
    if output_file is not None:
        write_summary(summary, Path(output_file))
    return summary


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "evaluate",
        help="Dice, IoU, ASSD and HD95 (mm) per case and label for a folder of predictions",
        description="Evaluate predicted segmentations against references matched by file name. Writes "
        "nnU-Net's summary.json layout with ASSD_mm and HD95_mm added, and a CSV beside it.",
    )
    parser.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="folder with the predicted segmentations")
    parser.add_argument("gt_dir", type=Path, metavar="GT_DIR", help="folder with the reference segmentations")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help=f"summary JSON to write (default: PRED_DIR/{DEFAULT_SUMMARY_NAME}); the CSV goes beside it",
    )
    parser.add_argument(
        "-l",
        "--labels",
        type=int,
        nargs="+",
        default=None,
        help="foreground labels (default: from GT_DIR/../dataset.json, else all found in GT_DIR)",
    )
    parser.add_argument(
        "-np",
        "--num-processes",
        type=int,
        default=default_num_processes,
        help=f"worker processes (default: {default_num_processes})",
    )
    parser.add_argument(
        "--file-ending",
        default=DEFAULT_FILE_ENDING,
        help=f"file ending of the segmentations (default: {DEFAULT_FILE_ENDING})",
    )
    parser.set_defaults(func=run)


def run(args):
    output_file = args.output or args.pred_dir / DEFAULT_SUMMARY_NAME
    summary = evaluate_folder(
        args.pred_dir,
        args.gt_dir,
        labels=args.labels,
        output_file=output_file,
        num_processes=args.num_processes,
        file_ending=args.file_ending,
    )
    mean = summary["foreground_mean"]
    print(
        f"{len(summary['metric_per_case'])} cases: mean Dice {mean['Dice']:.4f}, "
        f"ASSD {mean['ASSD_mm']:.2f} mm, HD95 {mean['HD95_mm']:.2f} mm"
    )
    print(f"wrote {output_file} and {output_file.with_suffix('.csv')}")
