"""What makes the frozen SAM encoder cheap: seconds per training iteration, encoder throughput, memory, prediction.

    python benchmarks/speed.py [--encoder vit_b] [--input-size 1024] [--steps 5] [--quick] [--channels-last]

--quick: input 256, 3 timed steps (a few minutes on a 2-core CPU). Without it: input 1024, 5 steps
(meant for a GPU). Timings: the three variants in one process, their steps interleaved, best of N
(fair on a machine shared with other jobs). Peak memory: each variant alone in its own subprocess
(CPU: max RSS of that process; CUDA: torch.cuda.max_memory_allocated). One AutoSAM head (4 classes), batch 4,
random 256x224 patches (ACDC-like), nnU-Net's DC_and_CE loss, AdamW as the trainer's
configure_optimizers; the encoder is a random checkpoint written in the official layout
(tests/sam_files.py), loaded as the trainers load it. On CUDA the step runs under nnU-Net's fp16
autocast with a GradScaler, as nnUNetTrainer does.

  (a) reference: the encoder on every step at the input size, segment_anything's own Attention/Block
      forward, fp32;
  (b) fast: the network as build_sam_network makes it (nnunet_autosam.fast_attention; bf16 autocast
      for the encoder on CUDA);
  (c) cached: no encoder; the head step on float16 embeddings read from a numpy memmap of shape
      (N, 256, S/16, S/16), as the embedding cache stores them, plus labels.

Prediction: nnUNetPredictor.predict_sliding_window_return_logits (tile step 0.5, Gaussian) on one real
ACDC volume (patient001 frame01, z-scored; its grid is already at ACDC's 1.5625 mm in-plane
spacing, so it is shaped as nnU-Net's 2d preprocessing leaves it, (1, 10, 256, 216)), with mirroring
on (nnU-Net's default, axes (0, 1): 4 passes per patch) and off, for the SAM network of (b) and for
nnU-Net's own 2d PlainConvUNet built from an ACDC-like 2d plans entry (patch 256x224, 6 stages,
32..512 features, instance norm; what nnUNetv2_plan_and_preprocess plans for ACDC 2d). A random
volume of that shape stands in where the ACDC file is absent.
The last line is ``speedups: cache=X fast_encoder=Y`` (seconds per iteration of (a) over (c) and (b)).
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
NUM_CLASSES = 4
ACDC_VOLUME = Path(os.environ.get("NNUNET_AUTOSAM_ACDC", Path(__file__).resolve().parents[2] / "shared/data/acdc")) \
    / "training/patient001/patient001_frame01.nii.gz"
UNET_2D_ACDC = {
    "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 512, 512],
    "conv_op": "torch.nn.modules.conv.Conv2d", "kernel_sizes": [[3, 3]] * 6,
    "strides": [[1, 1]] + [[2, 2]] * 5, "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5,
    "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
}


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_gb(device) -> float:
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _stock_encoder(encoder):
    """A second encoder object over the same tensors, with segment_anything's own Block/Attention classes."""
    import copy

    from segment_anything.modeling.image_encoder import Attention, Block
    from torch import nn

    def shell(module, cls):
        other = cls.__new__(cls)
        other.__dict__.update({k: (dict(v) if k in ("_modules", "_parameters", "_buffers") else v)
                               for k, v in module.__dict__.items()})
        return other

    stock = copy.copy(encoder)
    stock.__dict__ = {k: (dict(v) if k in ("_modules", "_parameters", "_buffers") else v)
                      for k, v in encoder.__dict__.items()}
    blocks = []
    for block in encoder.blocks:
        new_block = shell(block, Block)
        new_block._modules["attn"] = shell(block.attn, Attention)
        blocks.append(new_block)
    stock._modules["blocks"] = nn.ModuleList(blocks)
    return stock


def _network(args, device):
    from nnunet_autosam.network import EncoderSettings, build_sam_network
    checkpoint = None if args.encoder == "tiny" else args.weights
    network = build_sam_network(EncoderSettings(args.encoder, args.input_size, checkpoint), "autosam", 1,
                                NUM_CLASSES)
    if args.channels_last:
        network.encoder.to(memory_format=__import__("torch").channels_last)
    return network.to(device).train()


class _Variant:
    """One way to run a training step: its own head, optimizer and (for (a)/(b)) encoder."""

    def __init__(self, name, args, device, network=None):
        import numpy as np
        import torch
        from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

        from nnunet_autosam.fast_attention import encoder_autocast_dtype
        from nnunet_autosam.heads.autosam import AutoSAMHead
        from nnunet_autosam.trainers import AutoSAMTrainer

        self.name, self.args, self.device = name, args, device
        self.grid = args.input_size // 16
        if name == "b":
            self.network, self.head = network, network.head  # exactly what the trainers build
        else:
            self.head = AutoSAMHead(NUM_CLASSES, self.grid).to(device)  # random head weights: the same cost
        if name == "a":
            self.encoder, self.mapping = _stock_encoder(network.encoder), network.input_mapping
        elif name == "c":
            path = Path(args.workdir) / f"embeddings_{args.input_size}.npy"
            rows = max(64, 4 * args.batch_size * (args.steps + 2))
            cache = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                              shape=(rows, 256, self.grid, self.grid))
            for start in range(0, rows, 16):
                cache[start:start + 16] = np.random.default_rng(start).standard_normal(
                    (min(16, rows - start), 256, self.grid, self.grid), dtype=np.float32).astype(np.float16)
            cache.flush()
            del cache
            self.cache = np.load(path, mmap_mode="r")
            self.rng = np.random.default_rng(0)
        trainer = AutoSAMTrainer.__new__(AutoSAMTrainer)
        trainer.network = torch.nn.ModuleDict({"head": self.head})
        trainer.initial_lr, trainer.weight_decay, trainer.num_epochs, trainer.train_encoder = 5e-4, 3e-5, 1000, False
        self.optimizer, _ = trainer.configure_optimizers()
        self.loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                   weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
        self.scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
        self.data = torch.randn(args.batch_size, 1, *PATCH, device=device)
        self.images = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
        if args.channels_last:
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.encoder_dtype = encoder_autocast_dtype(device) if name == "b" else None

    def logits(self):
        import numpy as np
        import torch
        import torch.nn.functional as F
        if self.name == "c":
            index = np.sort(self.rng.choice(len(self.cache), self.args.batch_size, replace=False))
            embedding = torch.from_numpy(np.ascontiguousarray(self.cache[index])).to(self.device).float()
        elif self.name == "a":  # the reference: SAM's own forward in fp32, then the head
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                embedding = self.encoder(self.mapping(self.data))
        else:
            return self.network(self.data)
        return F.interpolate(self.head(embedding), size=PATCH, mode="bilinear", align_corners=False)

    def train_step(self) -> float:
        import torch
        target = torch.randint(0, NUM_CLASSES, (self.args.batch_size, 1, *PATCH), device=self.device).float()
        _sync(self.device)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            loss = self.loss(self.logits(), target)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        _sync(self.device)
        return time.perf_counter() - start

    def encoder_pass(self) -> float:
        """Seconds for one inference pass of the whole batch through the encoder (one call)."""
        import torch
        encoder = self.encoder if self.name == "a" else self.network.encoder
        _sync(self.device)
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.encoder_dtype,
                                                    enabled=self.encoder_dtype is not None):
            encoder(self.images)
        _sync(self.device)
        return time.perf_counter() - start


def measure_timing(args) -> dict:
    """All variants in one process, their steps interleaved, best of N: fair on a machine shared with other jobs."""
    import torch
    device = torch.device(args.device)
    network = _network(args, device)
    variants = {name: _Variant(name, args, device, network) for name in ("a", "b", "c")}
    times = {name: [] for name in variants}
    encoder_times = {"a": [], "b": []}
    for step in range(args.steps + 1):
        for name, variant in variants.items():
            seconds = variant.train_step()
            if step:  # the first step warms up allocators (and cuDNN)
                times[name].append(seconds)
    for rep in range(args.encoder_reps + 1):
        for name in encoder_times:
            seconds = variants[name].encoder_pass()
            if rep:
                encoder_times[name].append(seconds)
    return {"s_per_iter": {k: min(v) for k, v in times.items()},
            "images_per_s": {k: args.batch_size / min(v) for k, v in encoder_times.items()}}


def measure_memory(variant: str, args) -> dict:
    """Peak memory of one variant alone: build, two training steps, two encoder passes."""
    import torch
    device = torch.device(args.device)
    network = _network(args, device) if variant != "c" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runner = _Variant(variant, args, device, network)
    for _ in range(2):
        runner.train_step()
        if variant != "c":
            runner.encoder_pass()
    return {"peak_gb": _peak_gb(device)}


def _acdc_like_volume():
    import numpy as np
    if ACDC_VOLUME.is_file():
        import SimpleITK as sitk
        volume = sitk.GetArrayFromImage(sitk.ReadImage(str(ACDC_VOLUME))).astype(np.float32)  # (z, y, x)
        source = ACDC_VOLUME.name
    else:
        volume = np.random.default_rng(0).standard_normal((10, 256, 216)).astype(np.float32)
        source = "random stand-in (ACDC file absent)"
    volume = (volume - volume.mean()) / max(float(volume.std()), 1e-8)
    return volume[None], source


def measure_prediction(args) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    device = torch.device(args.device)
    volume, source = _acdc_like_volume()
    configuration = {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor",
                     "batch_size": 12, "patch_size": list(PATCH), "spacing": [1.5625, 1.5625],
                     "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
                     "architecture": {"network_class_name":
                                      "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                                      "arch_kwargs": UNET_2D_ACDC,
                                      "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    plans = {"dataset_name": "Dataset027_ACDC", "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2], "configurations": {"2d": configuration}}
    dataset_json = {"labels": {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}, "channel_names": {"0": "cineMRI"}}
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration("2d")
    unet = get_network_from_plans(configuration["architecture"]["network_class_name"], UNET_2D_ACDC,
                                  configuration["architecture"]["_kw_requires_import"], 1, NUM_CLASSES,
                                  allow_init=True, deep_supervision=False)
    results = {"volume": source, "shape": list(volume.shape)}
    data = torch.from_numpy(volume)
    for name, network in (("nnU-Net 2d PlainConvUNet", unet), (f"SAM {args.encoder} fast", _network(args, device))):
        for mirroring in (True, False):
            predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                        perform_everything_on_device=device.type == "cuda", device=device,
                                        allow_tqdm=False)
            predictor.manual_initialization(network, plans_manager, configuration_manager, None, dataset_json,
                                            "benchmark", (0, 1))
            predictor.predict_sliding_window_return_logits(data[:, :1])  # warm-up on one slice
            _sync(device)
            start = time.perf_counter()
            predictor.predict_sliding_window_return_logits(data)
            _sync(device)
            results[f"{name} | mirroring {'on' if mirroring else 'off'}"] = time.perf_counter() - start
    results["peak_gb"] = _peak_gb(device)
    return results


def _run_one(what: str, args) -> dict:
    command = [sys.executable, __file__, "--one", what, "--weights", args.weights, "--workdir", args.workdir,
               "--encoder", args.encoder, "--input-size", str(args.input_size), "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--encoder-reps", str(args.encoder_reps), "--device", args.device]
    if args.channels_last:
        command.append("--channels-last")
    output = subprocess.run(command, capture_output=True, text=True)
    if output.returncode:
        sys.exit(f"{what} failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="vit_b")
    parser.add_argument("--input-size", type=int, default=None, help="default 1024; 256 with --quick")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 5; 3 with --quick)")
    parser.add_argument("--encoder-reps", type=int, default=None, help="timed encoder passes (default 5; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="input 256 and few steps: minutes on a CPU")
    parser.add_argument("--channels-last", action="store_true", help="run (a) and (b) with channels-last tensors")
    parser.add_argument("--skip-prediction", action="store_true")
    parser.add_argument("--device", default=None, help="cuda where available, else cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.input_size = args.input_size or (256 if args.quick else 1024)
    args.steps = args.steps or (3 if args.quick else 5)
    args.encoder_reps = args.encoder_reps or (3 if args.quick else 5)
    if args.one:
        result = (measure_prediction(args) if args.one == "predict" else measure_timing(args) if args.one == "time"
                  else measure_memory(args.one, args))
        print(json.dumps(result))
        return

    import platform

    import torch
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    machine = (torch.cuda.get_device_name() if args.device == "cuda"
               else f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                    f"{torch.get_num_threads()} torch threads")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from sam_files import write_sam_checkpoint
    print(f"machine: {machine}; torch {torch.__version__}; encoder {args.encoder} at {args.input_size}, batch "
          f"{args.batch_size}, patch {PATCH[0]}x{PATCH[1]}, AutoSAM head, {NUM_CLASSES} classes, "
          f"best of {args.steps} interleaved steps", flush=True)
    memory = "peak GPU GB (max_memory_allocated)" if args.device == "cuda" else "peak RSS GB"
    with tempfile.TemporaryDirectory() as folder:
        args.workdir = folder
        args.weights = str(write_sam_checkpoint(Path(folder) / "sam_random.pth", "vit_b" if args.encoder == "tiny"
                                                else args.encoder))
        labels = {"a": "(a) reference: encoder every step, SAM's own attention",
                  "b": "(b) fast encoder path" + (" (bf16 autocast)" if args.device == "cuda" else " (fp32)"),
                  "c": "(c) cached fp16 embeddings (memmap), no encoder"}
        timing = _run_one("time", args)
        print(f"\n| variant | s / iteration (best of {args.steps}) | encoder images / s | {memory} |\n|---|---|---|---|")
        for variant in ("a", "b", "c"):
            peak = _run_one(variant, args)["peak_gb"]
            images = f"{timing['images_per_s'][variant]:.2f}" if variant in timing["images_per_s"] else "-"
            print(f"| {labels[variant]} | {timing['s_per_iter'][variant]:.3f} | {images} | {peak:.2f} |", flush=True)
        if not args.skip_prediction:
            p = _run_one("predict", args)
            print(f"\nprediction of one volume ({p['volume']}, shape {p['shape']}, nnUNetPredictor sliding window, "
                  f"patch {PATCH[0]}x{PATCH[1]}, step 0.5); {memory} {p['peak_gb']:.2f}\n"
                  f"| network | mirroring on (s) | mirroring off (s) |\n|---|---|---|")
            for name in ("nnU-Net 2d PlainConvUNet", f"SAM {args.encoder} fast"):
                print(f"| {name} | {p[f'{name} | mirroring on']:.2f} | {p[f'{name} | mirroring off']:.2f} |")
        seconds = timing["s_per_iter"]
        print(f"\nspeedups: cache={seconds['a'] / seconds['c']:.1f} fast_encoder={seconds['a'] / seconds['b']:.2f}")


if __name__ == "__main__":
    main()
