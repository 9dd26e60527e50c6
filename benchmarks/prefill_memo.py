"""Prediction cost of a frozen SAM encoder on small slices: one tile per call (nnUNetv2_predict alone) against
``prefill-memo`` (several tiles per encoder call) then nnUNetv2_predict, measured in one run.

    python benchmarks/prefill_memo.py [--encoder lite_medsam] [--cases 4] [--shape 12 48 64] [--batch-size 8]

A synthetic raw dataset with small non-square slices (nnunet_autosam.data.synthetic), planned and
preprocessed by nnU-Net; a linear head trained for 2 iterations (its weights do not matter here, only the
encoder's passes do); then the same test images predicted twice with the stock CLI, each time into an
empty embedding memo: once alone, once after prefill-memo. Prints both wall times, the share of voxels
whose labels agree, and a last line ``prefill: ratio=R`` (alone over prefill + predict).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from nnunet_autosam.data.synthetic import write_synthetic_raw_dataset
from nnunet_autosam.model.embedding_memo import MEMO_ENV
from nnunet_autosam.utilities.commands import Workspace

DATASET = "431"


def labels_agreement(first: Path, second: Path) -> float:
    agree = total = 0
    for path in sorted(first.glob("*.nii.gz")):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(second / path.name)))
        agree, total = agree + int((a == b).sum()), total + a.size
    return agree / max(total, 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--encoder", default="lite_medsam", help="one with a weights file (default: lite_medsam)")
    parser.add_argument("--cases", type=int, default=4, help="test cases to predict (default: 4)")
    parser.add_argument("--shape", type=int, nargs=3, default=(12, 48, 64), metavar=("Z", "Y", "X"))
    parser.add_argument("--batch-size", type=int, default=8, help="prefill-memo's tiles per call (default: 8)")
    args = parser.parse_args(argv)
    schedule = {"AUTOSAM_NUM_EPOCHS": "1", "AUTOSAM_ITERS_PER_EPOCH": "2", "AUTOSAM_VAL_ITERS_PER_EPOCH": "1"}
    with tempfile.TemporaryDirectory(prefix="prefill_bench_") as folder:
        root = Path(folder)
        workspace = Workspace(root, schedule, dataset=DATASET)
        raw = write_synthetic_raw_dataset(
            root / "nnUNet_raw", int(DATASET), num_patients=5 + args.cases, cases_per_patient=1, shape=args.shape
        )
        test_images = root / "test_images"
        test_images.mkdir()
        for path in sorted((raw / "imagesTr").glob("*_0000.nii.gz"))[-args.cases :]:
            path.rename(test_images / path.name)
            (raw / "labelsTr" / path.name.replace("_0000", "")).unlink()
        description = json.loads((raw / "dataset.json").read_text())
        (raw / "dataset.json").write_text(json.dumps({**description, "numTraining": 5}))
        plans = workspace.plan(["--encoder", args.encoder, "--batch-size", "2"])
        workspace.train("SAMLinearTrainer", 0, plans, "cpu")
        seconds, outputs = {}, {}
        for mode in ("alone", "prefilled"):
            workspace.env[MEMO_ENV] = str(root / f"memo_{mode}")
            outputs[mode] = root / f"predictions_{mode}"
            start = time.perf_counter()
            if mode == "prefilled":
                prefill = ["-i", str(test_images), "-d", DATASET, "-p", plans, "--batch-size", str(args.batch_size)]
                workspace.plugin("prefill-memo", *prefill, "--device", "cpu")
            workspace.predict(test_images, outputs[mode], "SAMLinearTrainer", 0, plans, "cpu")
            seconds[mode] = time.perf_counter() - start
        tiles = len(list((root / "memo_alone").rglob("*.npy")))
        agreement = labels_agreement(outputs["alone"], outputs["prefilled"])
    depth, height, width = args.shape
    print(f"{args.cases} cases of {depth} slices {height}x{width}, {tiles} tiles, {args.encoder}")
    print(f"nnUNetv2_predict alone (one tile per call): {seconds['alone']:.1f} s")
    print(f"prefill-memo (batch {args.batch_size}) + nnUNetv2_predict: {seconds['prefilled']:.1f} s")
    print(f"labels equal in {100 * agreement:.3f}% of voxels")
    print(f"prefill: ratio={seconds['alone'] / seconds['prefilled']:.2f}")


if __name__ == "__main__":
    main()
