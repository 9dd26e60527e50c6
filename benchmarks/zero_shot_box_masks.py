"""What each oracle box alone gives in zero-shot SAM, before overlaps are resolved, on one labelled ACDC frame.

    python benchmarks/zero_shot_box_masks.py [--image patient001_frame01.nii.gz] [--slices 2 4 6]
                                             [--encoder lite_medsam]

Per slice and class: the Dice of that class's box mask (logit > 0) with the class itself and with the
union of myocardium and LV, then the Dice of each class after ``zero-shot``'s highest-logit rule. It shows
why the zero-shot row's Myo and LV are low: the myocardium's box returns the cavity inside the ring.
Run it on a training patient, never on the test set.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from nnunet_autosam.data.conversion import default_acdc_folder
from nnunet_autosam.inference import box_prompts, zero_shot

ACDC = default_acdc_folder()
CLASSES = {1: "RV", 2: "Myo", 3: "LV"}


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    return 2 * (prediction & reference).sum() / max(prediction.sum() + reference.sum(), 1)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=ACDC / "training/patient001/patient001_frame01.nii.gz")
    parser.add_argument("--slices", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--encoder", default="lite_medsam")
    parser.add_argument("--input-size", type=int, default=256)
    args = parser.parse_args()
    reference_path = args.image.with_name(args.image.name.replace(".nii.gz", "_gt.nii.gz"))
    _, volume, reference = zero_shot.read_case(args.image, reference_path)
    segmenter = box_prompts.BoxPromptSegmenter.build(args.encoder, args.input_size).eval()
    for z in args.slices:
        classes, boxes = box_prompts.tight_boxes(reference[z], 0, None)
        embedding = segmenter.embed(torch.from_numpy(volume[[z]][:, None]))
        logits = segmenter.slice_logits(embedding, boxes, volume.shape[1:])
        for row, label in enumerate(classes):
            mask = (logits[row] > 0).numpy()
            print(
                f"slice {z} {CLASSES[int(label)]} box: Dice with {CLASSES[int(label)]} "
                f"{dice(mask, reference[z] == label):.2f}, with Myo+LV {dice(mask, reference[z] >= 2):.2f}"
            )
        combined = box_prompts.resolve_overlaps(classes, logits)
        print(
            f"slice {z} after overlaps: "
            + ", ".join(
                f"{name} {dice(combined == label, reference[z] == label):.2f}" for label, name in CLASSES.items()
            )
        )


if __name__ == "__main__":
    main()
