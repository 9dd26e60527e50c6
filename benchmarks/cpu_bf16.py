"""fp32 against bf16 autocast on the CPU, for every path nnunet_autosam.utilities.precision switches; run by speed.py.

Each path is timed in fp32 (AUTOSAM_CPU_BF16=0) and in bf16 (=1) in the same process, the two
interleaved, best of N after one untimed warm-up (whose fp32 run is counted by
torch.utils.flop_counter: multiply and add counted apart, forward and backward). Achieved GFLOP/s =
those FLOPs over the best time; the limit this machine sets is a large bf16 matrix product, timed in
the same run.

Paths (batch B, ACDC-like 256x224 patches, 4 classes): the frozen encoder's inference pass (images/s);
one training step of each head from cached embeddings (AutoSAM, linear, CNN: head, CE + Dice, fused
AdamW, as the trainers' cached step); AutoSAM with the encoder trained (ft-all, the whole network);
nnU-Net's 2d PlainConvUNet training step (deep supervision, SGD as nnUNetTrainer; the network under the
same CPU autocast wrapper nnUNetTrainerEnvSchedule gives it); the prediction of one volume through
nnUNetPredictor (our AutoSAM network without mirroring, the SAM trainers' default; nnU-Net's network
with mirroring, its default). It also reports how far the bf16 embedding and predicted labels are
from fp32's. AutoSAM's head runs in fp32 on the CPU in both (AutoSAMHead.cpu_bf16 says why), so its
cached step's ratio is about 1 by design; ft-all's gain is its encoder's.
"""

import os
import time
from collections import Counter
from contextlib import contextmanager

PATHS = ("encoder", "autosam_step", "linear_step", "cnn_step", "ftall_step", "nnunet_step", "predict", "nnunet_predict")


@contextmanager
def precision(name: str):
    """fp32 everywhere, or bf16 everywhere the project can use it (the frozen encoder included, which by
    default stays fp32 on the CPU)."""
    from nnunet_autosam.utilities.precision import CPU_BF16_ENV, FROZEN_ENCODER_BF16_ENV

    previous = {key: os.environ.get(key) for key in (CPU_BF16_ENV, FROZEN_ENCODER_BF16_ENV)}
    os.environ[CPU_BF16_ENV] = "1" if name == "bf16" else "0"
    os.environ[FROZEN_ENCODER_BF16_ENV] = "1" if name == "bf16" else "0"
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value


def _loss():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    return DC_and_CE_loss(
        {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        dice_class=MemoryEfficientSoftDiceLoss,
    )


def _trainer_optimizer(network, train_encoder: bool):
    """The SAM trainers' own optimizer (fused AdamW, encoder group for ft-all)."""
    from nnunet_autosam.training.trainers import AutoSAMTrainer

    trainer = AutoSAMTrainer.__new__(AutoSAMTrainer)
    trainer.network = network
    trainer.initial_lr, trainer.weight_decay, trainer.num_epochs, trainer.train_encoder = (
        5e-4,
        3e-5,
        1000,
        train_encoder,
    )
    return trainer.configure_optimizers()[0]


def _sam_network(args, head: str, train_encoder: bool = False):
    from nnunet_autosam.experiment_planning.settings import EncoderSettings
    from nnunet_autosam.model.network import build_sam_network

    checkpoint = None if args.encoder in ("tiny", "lite_medsam") else args.weights
    network = build_sam_network(
        EncoderSettings(args.encoder, args.input_size, checkpoint),
        head,
        1,
        args.num_classes,
        train_encoder=train_encoder,
    )
    return network.train()


def _training_step(network, optimizer, compute_loss):
    """One step as the trainers take it: zero the gradients, backward, clip to 12 (nnU-Net's), step."""
    import torch

    def step():
        optimizer.zero_grad(set_to_none=True)
        compute_loss().backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()

    return step


def _cached_step(args, head: str):
    """A head's training step on a cached-embedding batch, as SAMTrainerBase.train_step runs it."""
    import torch

    from nnunet_autosam.model import encoders

    network = _sam_network(args, head)
    optimizer, loss = _trainer_optimizer(network, False), _loss()
    grid = encoders.family(args.encoder).embedding_grid(args.encoder, args.input_size)
    embedding = torch.randn(args.batch_size, 256, grid, grid)
    target = torch.randint(0, args.num_classes, (args.batch_size, 1, *args.patch)).float()
    return _training_step(network, optimizer, lambda: loss(network.segment(embedding, target.shape[-2:]), target))


def _ftall_step(args):
    import torch

    network = _sam_network(args, "autosam", train_encoder=True)
    optimizer, loss = _trainer_optimizer(network, True), _loss()
    data = torch.randn(args.batch_size, 1, *args.patch)
    target = torch.randint(0, args.num_classes, (args.batch_size, 1, *args.patch)).float()
    return _training_step(network, optimizer, lambda: loss(network(data), target))


def unet_2d(args, deep_supervision: bool):
    """nnU-Net's 2d PlainConvUNet for ACDC-like plans, wrapped as nnUNetTrainerEnvSchedule wraps it."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from nnunet_autosam.utilities.precision import autocast_forward_on_cpu

    network = get_network_from_plans(
        "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        args.unet_arch,
        ["conv_op", "norm_op", "dropout_op", "nonlin"],
        1,
        args.num_classes,
        allow_init=True,
        deep_supervision=deep_supervision,
    )
    return autocast_forward_on_cpu(network)


def _nnunet_step(args):
    import torch
    import torch.nn.functional as F
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    network = unet_2d(args, deep_supervision=True).train()
    optimizer = torch.optim.SGD(network.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    data = torch.randn(args.batch_size, 1, *args.patch)
    target = torch.randint(0, args.num_classes, (args.batch_size, 1, *args.patch)).float()
    with torch.no_grad():
        sizes = [o.shape[-2:] for o in network(data[:1])]
    targets = [F.interpolate(target, size=s, mode="nearest") for s in sizes]
    weights = [1 / 2**i for i in range(len(sizes))]
    weights[-1] = 0  # nnU-Net drops the lowest resolution
    loss = DeepSupervisionWrapper(_loss(), [w / sum(weights) for w in weights])

    return _training_step(network, optimizer, lambda: loss(network(data), targets))


def _time_pair(run, reps: int, count_flops: bool = True):
    """(best fp32 s, best bf16 s, FLOPs of one fp32 call): ``run`` in both precisions, interleaved."""
    from torch.utils.flop_counter import FlopCounterMode

    best = {"fp32": float("inf"), "bf16": float("inf")}
    flops = 0
    for rep in range(reps + 1):
        for name in best:
            with precision(name):
                if rep == 0 and name == "fp32" and count_flops:
                    with FlopCounterMode(display=False) as counter:
                        run()
                    flops = counter.get_total_flops()
                    continue
                start = time.perf_counter()
                run()
                seconds = time.perf_counter() - start
            if rep:
                best[name] = min(best[name], seconds)
    return best["fp32"], best["bf16"], flops


def matmul_peak(size: int = 4096) -> dict:
    """GFLOP/s of one large matrix product, fp32 and under bf16 autocast (best of 3)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    result = {}
    for name in ("fp32", "bf16"):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
            a @ b
            seconds = min(_timed(lambda: a @ b) for _ in range(3))
        result[name] = 2 * size**3 / seconds / 1e9
    return result


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _prediction(args, network, volume, mirroring: bool):
    """A run of nnUNetPredictor's sliding window over ``volume`` with ``network``; returns a callable."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        network, args.plans_manager, args.configuration_manager, None, args.dataset_json, "benchmark", (0, 1)
    )
    outputs, calls = {}, []
    network.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape))

    def run():
        calls.clear()
        outputs[os.environ["AUTOSAM_CPU_BF16"]] = predictor.predict_sliding_window_return_logits(volume)

    return run, outputs, calls


def _forward_flops(network, shape) -> int:
    """FLOPs of one forward pass on an input of ``shape``, with autograd on: FlopCounterMode's module
    tracker fails on module inputs derived from parameters under inference mode, as the predictor runs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        network(torch.randn(shape))
    return counter.get_total_flops()


def measure(args) -> dict:
    """Every path in fp32 and bf16: {path: (fp32 s, bf16 s, FLOPs)}, plus the matmul peak and the deviations."""
    import torch

    results = {"matmul_gflops": matmul_peak()}
    images = torch.randn(args.batch_size, 1, *args.patch)
    encoder_network = _sam_network(args, "linear").eval()
    embeddings = {}

    def encode():
        with torch.inference_mode():
            embeddings[os.environ["AUTOSAM_CPU_BF16"]] = encoder_network.encode(images)

    results["encoder"] = _time_pair(encode, args.encoder_reps)
    fp32, bf16 = embeddings["0"], embeddings["1"]
    results["embedding_max_error"] = ((bf16 - fp32).abs().max() / fp32.abs().max()).item()
    results["embedding_mean_error"] = ((bf16 - fp32).abs().mean() / fp32.abs().mean()).item()
    for head in ("autosam", "linear", "cnn"):
        step = _cached_step(args, head)
        results[f"{head}_step"] = _time_pair(step, args.steps)
    results["ftall_step"] = _time_pair(_ftall_step(args), max(1, args.steps - 1))
    results["nnunet_step"] = _time_pair(_nnunet_step(args), args.steps)
    volume = torch.from_numpy(args.volume)
    for path, network, mirroring in (
        ("predict", _sam_network(args, "autosam").eval(), False),
        ("nnunet_predict", unet_2d(args, deep_supervision=False).eval(), True),
    ):
        run, outputs, calls = _prediction(args, network, volume, mirroring)
        fp32_s, bf16_s, _ = _time_pair(run, max(1, args.steps - 2), count_flops=False)
        flops = sum(_forward_flops(network, shape) * count for shape, count in Counter(calls).items())
        results[path] = (fp32_s, bf16_s, flops)
        labels_fp32, labels_bf16 = outputs["0"].argmax(0), outputs["1"].argmax(0)
        results[f"{path}_labels_equal"] = (labels_fp32 == labels_bf16).float().mean().item()
    return results


def print_report(results: dict, batch_size: int) -> str:
    """The table (markdown) and the closing ``bf16:`` line; returns that line."""
    peak = results["matmul_gflops"]["bf16"]
    print(
        f"\nCPU fp32 against bf16 autocast (AUTOSAM_CPU_BF16=0 / 1), best of interleaved runs; large matmul: "
        f"fp32 {results['matmul_gflops']['fp32']:.0f} GFLOP/s, bf16 {peak:.0f} GFLOP/s "
        f"(x{peak / results['matmul_gflops']['fp32']:.2f})\n"
        f"| path | fp32 s | bf16 s | bf16 speed-up | GFLOP per call | bf16 GFLOP/s | share of bf16 matmul peak |\n"
        f"|---|---|---|---|---|---|---|"
    )
    for path in PATHS:
        fp32, bf16, flops = results[path]
        achieved = flops / bf16 / 1e9
        print(
            f"| {path} | {fp32:.3f} | {bf16:.3f} | {fp32 / bf16:.2f} | {flops / 1e9:.1f} | {achieved:.0f} | "
            f"{100 * achieved / peak:.0f}% |"
        )
    print(
        f"encoder: {batch_size / results['encoder'][0]:.2f} images/s fp32, {batch_size / results['encoder'][1]:.2f} "
        f"bf16; bf16 embedding against fp32: max error {results['embedding_max_error']:.2e}, mean "
        f"{results['embedding_mean_error']:.2e} (relative to the largest / mean magnitude)"
    )
    print(
        f"predicted labels equal to fp32's: ours {100 * results['predict_labels_equal']:.3f}%, nnU-Net "
        f"{100 * results['nnunet_predict_labels_equal']:.3f}% of voxels"
    )
    ratio = {path: results[path][0] / results[path][1] for path in PATHS}
    return (
        f"bf16: encoder={ratio['encoder']:.2f} nnunet_step={ratio['nnunet_step']:.2f} "
        f"cnn_step={ratio['cnn_step']:.2f} autosam_step={ratio['autosam_step']:.2f} "
        f"predict={ratio['predict']:.2f} linear_step={ratio['linear_step']:.2f} "
        f"ftall_step={ratio['ftall_step']:.2f} nnunet_predict={ratio['nnunet_predict']:.2f}"
    )
