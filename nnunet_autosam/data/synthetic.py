"""Small synthetic datasets for demos and tests: a cardiac-like one in ACDC's official layout, and an
nnU-Net raw dataset of another shape (more classes, non-square slices, several cases per patient).

Each patient of the ACDC-like one has an ED and an ES frame: short-axis slices with a bright LV cavity
(label 3) inside a dark myocardial ring (2) and a crescent-shaped RV cavity (1) beside it, in noisy tissue, 1.5 mm
in-plane and 10 mm between slices. Because the layout is ACDC's, the same converter reads it, so a
demo on this data runs exactly the commands a user runs on ACDC.
"""

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")
SPACING = (1.5, 1.5, 10.0)


def _frame(rng: np.random.Generator, shape, centre, lv_radius: float, wall: float):
    """One frame: (image float32, labels uint8), arrays in z, y, x order."""
    depth, height, width = shape
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    image = rng.normal(0.3, 0.05, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    for z in range(depth):
        taper = 1.0 - 0.6 * abs(z - depth / 2) / depth  # the heart narrows towards apex and base
        cy, cx = centre[0] + rng.normal(0, 0.5), centre[1] + rng.normal(0, 0.5)
        distance = np.hypot(yy - cy, xx - cx)
        lv, myo = (
            distance < lv_radius * taper,
            (distance >= lv_radius * taper) & (distance < (lv_radius + wall) * taper),
        )
        rv_distance = np.hypot(yy - cy, xx - (cx - 1.9 * lv_radius * taper))
        rv = (rv_distance < 1.3 * lv_radius * taper) & ~lv & ~myo & (distance >= (lv_radius + wall) * taper)
        labels[z][rv], labels[z][myo], labels[z][lv] = 1, 2, 3
        image[z][lv | rv] += 0.6
        image[z][myo] -= 0.15
    return image, labels


def _write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    sitk.WriteImage(image, str(path), useCompression=True)


def _write_patient(patient_dir: Path, patient: str, group: str, shape, rng: np.random.Generator) -> None:
    patient_dir.mkdir(parents=True, exist_ok=True)
    centre = (shape[1] / 2 + rng.uniform(-10, 10), shape[2] / 2 + rng.uniform(0, 15))
    ed_radius = rng.uniform(14, 20)
    frames = {1: ed_radius, 10: ed_radius * rng.uniform(0.6, 0.8)}  # ES: the cavity contracts
    for frame, radius in frames.items():
        image, labels = _frame(rng, shape, centre, radius, wall=rng.uniform(5, 8))
        _write(image, patient_dir / f"{patient}_frame{frame:02d}.nii.gz")
        _write(labels, patient_dir / f"{patient}_frame{frame:02d}_gt.nii.gz")
    (patient_dir / "Info.cfg").write_text(f"ED: 1\nES: 10\nGroup: {group}\nHeight: 170.0\nWeight: 70.0\nNbFrame: 20\n")


def write_synthetic_acdc(
    folder, num_patients: int = 6, num_testing: int = 0, shape=(8, 128, 128), seed: int = 0
) -> Path:
    """Write ``folder``/training/patient001... and testing/patient101... like ACDC's; returns ``folder``."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for index in range(1, num_patients + 1):
        patient = f"patient{index:03d}"
        _write_patient(folder / "training" / patient, patient, GROUPS[(index - 1) % len(GROUPS)], shape, rng)
    for index in range(101, 101 + num_testing):
        patient = f"patient{index:03d}"
        _write_patient(folder / "testing" / patient, patient, GROUPS[index % len(GROUPS)], shape, rng)
    return folder


def _blobs(rng: np.random.Generator, shape, num_classes: int):
    """One volume of ``num_classes`` bright ellipses on noise, each class at its own place and brightness."""
    depth, height, width = shape
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    image = rng.normal(0.2, 0.05, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    for label in range(1, num_classes + 1):
        cy = height * (0.25 + 0.5 * rng.random())
        cx = width * label / (num_classes + 1) + rng.normal(0, 1)
        ry, rx = height * rng.uniform(0.12, 0.2), width * rng.uniform(0.05, 0.08)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        labels[:, inside] = label
        image[:, inside] += 0.25 * label
    return image, labels


def write_synthetic_raw_dataset(
    raw_folder,
    dataset_id: int = 402,
    name: str = "SyntheticBlobs",
    num_patients: int = 4,
    cases_per_patient: int = 2,
    shape=(4, 40, 56),
    num_classes: int = 3,
    seed: int = 0,
    num_channels: int = 1,
) -> Path:
    """An nnU-Net v2 raw dataset (imagesTr, labelsTr, dataset.json; no imagesTs) that is not ACDC-shaped:
    ``num_classes`` foreground classes, non-square slices, and cases named ``patientNN_<letter>``,
    ``cases_per_patient`` of them per patient (time points of one patient, to be grouped). Returns its folder.

    With ``num_channels`` > 1, channel c is the same blobs brighter and noisier (as a second MRI sequence
    would differ), from its own random stream, so that channel 0 stays what a one-channel dataset holds."""
    folder = Path(raw_folder) / f"Dataset{dataset_id:03d}_{name}"
    rng = np.random.default_rng(seed)
    for subfolder in ("imagesTr", "labelsTr"):
        (folder / subfolder).mkdir(parents=True, exist_ok=True)
    for patient in range(1, num_patients + 1):
        for visit in range(cases_per_patient):
            case = f"patient{patient:02d}_{chr(ord('a') + visit)}"
            image, labels = _blobs(rng, shape, num_classes)
            _write(image, folder / "imagesTr" / f"{case}_0000.nii.gz")
            for channel in range(1, num_channels):
                noise = np.random.default_rng([seed, patient, visit, channel]).normal(0, 0.05 * channel, shape)
                other = (image * (1 + channel) + noise).astype(np.float32)
                _write(other, folder / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
            _write(labels, folder / "labelsTr" / f"{case}.nii.gz")
    classes = {"background": 0, **{f"blob{label}": label for label in range(1, num_classes + 1)}}
    dataset = {
        "channel_names": {"0": "synthetic", **{str(c): f"synthetic{c}" for c in range(1, num_channels)}},
        "labels": classes,
        "numTraining": num_patients * cases_per_patient,
        "file_ending": ".nii.gz",
        "name": name,
        "description": "synthetic blobs on noise (nnunet_autosam.data.synthetic), for tests",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    return folder
