"""Which floating-point precision each path runs in, on CUDA and on the CPU.

nnU-Net autocasts to fp16 on CUDA only; on a CPU everything runs in fp32. Yet recent x86 CPUs
(AVX512-BF16: AMD since Zen 4, Intel since Cooper Lake; AMX-BF16: Intel since Sapphire Rapids)
multiply bf16 matrices several times faster than fp32 ones, and PyTorch's CPU autocast reaches those
units through oneDNN. So on such a CPU what trains autocasts to bf16, as nnU-Net's training does to
fp16 on a GPU: the linear and CNN heads' step and forward, a trained encoder (AutoSAM ft-all), SimCLR
pretraining, and the nnU-Net baseline variant (``nnUNetTrainerEnvSchedule``). Stock ``nnUNetTrainer`` is
untouched. AutoSAM's head stays fp32 on the CPU: bf16 was slower there on two of three CPUs and scored lower
in seeded pairs (its class says more; ``SegmentationHead.cpu_bf16``).

The frozen encoder stays fp32 on the CPU unless asked: its embeddings are computed once and read by
every head, fold and prediction (cache, memo, validation, ``nnUNetv2_predict``, zero-shot), and in
the parity runs on ACDC (docs/cpu_precision.md) AutoSAM trained on bf16 embeddings scored lower on
average than on fp32 ones, by less than the runs' own spread.

- ``AUTOSAM_CPU_BF16``: ``auto`` (default: on where the CPU has bf16 instructions and a probe timed once
  per machine finds bf16 at least ``BF16_MIN_SPEEDUP`` times as fast as fp32), ``1`` to force it on, ``0``
  to force it off (the fp32 path, exactly as without this module). The instructions alone do not tell:
  on an Intel Xeon with AVX512-BF16 whose AMX units its hypervisor hides, bf16 ran nnU-Net's step at
  0.83x fp32's speed and prediction at 0.75x, where an AMD Zen 4 with the same instructions ran them at
  1.65x and 1.66x (docs/cpu_precision.md).
- ``AUTOSAM_CPU_BF16_ENCODER``: ``1`` runs the frozen encoder in bf16 too where CPU bf16 is on (about
  twice as fast here); ``0`` (default) keeps it in fp32.

Both are read at every call, so a process may switch them between runs (benchmarks/speed.py does).
The precision an embedding was computed in (``embedding_precision``) is part of the embedding cache's
and the prediction memo's keys, so fp32 and bf16 embeddings never mix.
"""

import functools
import json
import math
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from nnunet_autosam.utilities.atomic import write_json
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.locks import exclusive

CPU_BF16_ENV = "AUTOSAM_CPU_BF16"
PROBE_FILE_ENV = "AUTOSAM_CPU_PROBE_FILE"
FROZEN_ENCODER_BF16_ENV = "AUTOSAM_CPU_BF16_ENCODER"
BF16_MIN_SPEEDUP = 1.1  # below this, bf16's rounding is not worth its gain


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16) for oneDNN to use.

    Not oneDNN's own bf16 check: that also accepts plain AVX-512, where bf16 is emulated and slower than fp32.
    """
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    has_units = bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return has_units and torch.backends.mkldnn.is_available()


def probe_file() -> Path:
    """Where the probe's ratio is kept: $AUTOSAM_CPU_PROBE_FILE, else nnunet_autosam/ in the user's cache folder."""
    configured = os.environ.get(PROBE_FILE_ENV)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnunet_autosam" / "cpu_bf16_probe.json"


def probe_key() -> str:
    """The machine a ratio holds for: host, CPU capability and torch. Not the threads: nnU-Net's commands set
    theirs to the CPU count and others keep torch's default, and one machine's processes must decide alike."""
    return f"{platform.node()} {torch.backends.cpu.get_cpu_capability()} torch {torch.__version__}"


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """bf16 autocast's speed over fp32's on this machine: timed by the first process to ask, then read from
    ``probe_file()`` by every process, so that all of one machine's trainings decide alike.

    Timed anew in each process, the ratio followed the load: on a 2-core AMD EPYC that runs bf16 at about 2x,
    it read 0.74 to 4.30 in the trainings of one test run beside another job, and `auto` took fp32 in some and
    bf16 in others. Delete the file to time it again (on an idle machine); where it cannot be written, each
    process times its own.
    """
    path, key = probe_file(), probe_key()
    try:
        with exclusive(path.with_name(path.name + ".lock")):
            try:
                known = json.loads(path.read_text(encoding="utf-8"))
            except (FileNotFoundError, json.JSONDecodeError):
                known = {}
            if key not in known:
                known[key] = round(timed_bf16_speedup(), 3)
                write_json(known, path)
            return float(known[key])
    except OSError:
        return timed_bf16_speedup()


def timed_bf16_speedup() -> float:
    """bf16 autocast's speed over fp32's on this CPU, at the threads torch has, timed now.

    The probe is a 3x3 convolution at 64 channels, forward and backward, the two interleaved, best of 3
    after a warm-up (oneDNN builds its kernels on first use); about 0.5 s on 2 cores. Convolutions are the
    bulk of nnU-Net's and the CNN head's work, and the probe ranked every path of docs/cpu_precision.md on
    the same side of 1 on both CPUs measured there. Its tensors come from its own generator, so the global
    random state that seeded runs rely on is left as it was.
    """
    with torch.inference_mode(False), torch.enable_grad():  # also when first asked inside a prediction
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(64, 64, 3, 3, generator=generator)
        images = torch.randn(2, 64, 64, 64, generator=generator, requires_grad=True)

        def seconds(bf16: bool) -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = torch.nn.functional.conv2d(images, weight, padding=1)
            y.float().sum().backward()
            return time.perf_counter() - start

        seconds(False), seconds(True)
        best = {False: math.inf, True: math.inf}
        for _ in range(3):
            for bf16 in best:
                best[bf16] = min(best[bf16], seconds(bf16))
    return best[False] / best[True]


def cpu_bf16_pays() -> bool:
    """Whether this CPU has bf16 instructions and runs them at least ``BF16_MIN_SPEEDUP`` times fp32's speed."""
    return cpu_has_bf16() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def cpu_bf16_enabled() -> bool:
    """$AUTOSAM_CPU_BF16 (auto, 1 or 0) against what this CPU can do."""
    value = os.environ.get(CPU_BF16_ENV, "auto").strip().lower()
    if value in ("", "auto"):
        return cpu_bf16_pays()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise InputError(
        f"{CPU_BF16_ENV}={os.environ[CPU_BF16_ENV]!r} is not a setting: use auto, 1 (force bf16 on "
        f"the CPU) or 0 (fp32 on the CPU)"
    )


def frozen_encoder_bf16() -> bool:
    """$AUTOSAM_CPU_BF16_ENCODER (0 or 1): whether a frozen encoder joins CPU bf16 where that is on."""
    value = os.environ.get(FROZEN_ENCODER_BF16_ENV, "0").strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("", "0", "off", "false", "no"):
        return False
    raise InputError(
        f"{FROZEN_ENCODER_BF16_ENV}={os.environ[FROZEN_ENCODER_BF16_ENV]!r} is not a setting: use 0 (the frozen "
        f"encoder in fp32 on the CPU) or 1 (in bf16 where {CPU_BF16_ENV} is on)"
    )


def encoder_dtype(device: torch.device, trained: bool = False) -> torch.dtype | None:
    """The dtype a SAM-family encoder runs in under autocast: bf16 on CUDA (fp16 where bf16 is missing); on a
    CPU with CPU bf16 on, bf16 for an encoder being ``trained`` and for a frozen one only with
    $AUTOSAM_CPU_BF16_ENCODER=1; None (fp32) otherwise."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16_enabled() and (trained or frozen_encoder_bf16()):
        return torch.bfloat16
    return None


def embedding_precision(device: torch.device) -> str:
    """The name of the precision a frozen encoder runs in: part of the cache and memo keys."""
    dtype = encoder_dtype(device)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def encoder_autocast(device: torch.device, trained: bool = False):
    """Autocast to ``encoder_dtype(device, trained)`` (none where that is fp32): how every SAM-family encoder runs."""
    dtype = encoder_dtype(device, trained)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def cpu_autocast(device: torch.device):
    """bf16 autocast for CPU work where $AUTOSAM_CPU_BF16 turns it on; a no-op elsewhere.

    On CUDA this does nothing: nnU-Net's own fp16 autocast already covers the GPU paths.
    """
    if device.type == "cpu" and cpu_bf16_enabled():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def head_autocast(device: torch.device, head: torch.nn.Module):
    """How a segmentation head runs: under ``cpu_autocast`` on a CPU if its class allows (``cpu_bf16``), else with
    CPU autocast off, also inside a training step's; on CUDA as the caller's autocast has it."""
    if device.type == "cpu" and not getattr(head, "cpu_bf16", True):
        return torch.autocast("cpu", enabled=False)
    return cpu_autocast(device)


def training_autocast(device: torch.device):
    """The autocast around a training step outside nnU-Net's own: fp16 on CUDA as nnU-Net's train_step
    uses, bf16 on a CPU where it is on, none otherwise."""
    if device.type == "cuda":
        return torch.autocast("cuda", enabled=True)
    return cpu_autocast(device)


def _as_float(output):
    if isinstance(output, torch.Tensor):
        return output.float()
    if isinstance(output, (list, tuple)):
        return type(output)(_as_float(o) for o in output)
    return output


def autocast_forward_on_cpu(network: torch.nn.Module) -> torch.nn.Module:
    """Make ``network``'s forward run under CPU bf16 autocast where it is on; returns ``network``.

    For nnU-Net's own networks, whose trainer and predictor autocast on CUDA only: with this, training
    (forward and backward), validation and ``nnUNetv2_predict`` run in bf16 on such a CPU. Outputs
    come back in fp32, so the loss and the predictor's accumulation of tiles stay in fp32. Decided at
    each call from the input's device, so the same network runs unchanged on CUDA. Only the instance's
    forward is wrapped: parameters, state-dict keys and checkpoints are those of the stock network.
    """
    forward = network.forward

    @functools.wraps(forward)
    def forward_in_cpu_bf16(x, *args, **kwargs):
        if x.device.type != "cpu" or not cpu_bf16_enabled():
            return forward(x, *args, **kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = forward(x, *args, **kwargs)
        return _as_float(output)

    network.forward = forward_in_cpu_bf16
    return network


def describe(device: torch.device) -> str:
    """One line for logs and ``doctor``: what runs in which precision on ``device``."""
    if device.type == "cuda":
        return f"CUDA: nnU-Net's fp16 autocast; SAM encoders in {embedding_precision(device)}"
    setting = os.environ.get(CPU_BF16_ENV, "auto")
    units = f"bf16 units at {cpu_bf16_speedup():.2f}x fp32's speed" if cpu_has_bf16() else "no bf16 units"
    if not cpu_bf16_enabled():
        return f"CPU ({units}, {CPU_BF16_ENV}={setting}): fp32"
    encoder = "bf16" if frozen_encoder_bf16() else f"fp32 ({FROZEN_ENCODER_BF16_ENV}=1 for bf16)"
    from nnunet_autosam.model.heads import HEADS  # here: the heads' modules are heavier than this one's users need

    fp32_heads = [f"{spec.display_name}'s head" for spec in HEADS.values() if not spec.head_class.cpu_bf16]
    where = "bf16 autocast" + (f", {' and '.join(fp32_heads)} in fp32" if fp32_heads else "")
    return f"CPU ({units}, {CPU_BF16_ENV}={setting}): {where}; a frozen encoder in {encoder}"
