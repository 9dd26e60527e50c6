"""A small synthetic cardiac-like dataset in ACDC's official layout, for demos and tests without ACDC.

Each patient has an ED and an ES frame: short-axis slices with a bright LV cavity (label 3) inside a
dark myocardial ring (2) and a crescent-shaped RV cavity (1) beside it, in noisy tissue, 1.5 mm
in-plane and 10 mm between slices. Because the layout is ACDC's, the same converter reads it, so a
demo on this data runs exactly the commands a user runs on ACDC.
"""

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
