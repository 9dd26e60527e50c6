"""`nnunet-autosam doctor` checks the set-up; `nnunet-autosam trainer-dir` prints the folder for nnUNet_extTrainer."""

import os
from importlib import metadata
from pathlib import Path

from nnunet_autosam.model import encoders
from nnunet_autosam.utilities.nnunet_paths import trainer_dir

MIN_NNUNET = (2, 8, 1)


def _version_tuple(version: str) -> tuple:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def check_nnunet_version() -> tuple:
    version = metadata.version("nnunetv2")
    if _version_tuple(version) >= MIN_NNUNET:
        return True, f"nnunetv2 {version}"
    return False, f"nnunetv2 {version} is too old (nnUNet_extTrainer needs 2.8.1): pip install -U 'nnunetv2>=2.8.1'"


def check_trainer_variable() -> tuple:
    folder = trainer_dir().resolve()
    entries = [Path(p).expanduser().resolve() for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if folder in entries:
        return True, f"nnUNet_extTrainer includes {folder}"
    return False, (
        "nnUNet_extTrainer does not include the SAM trainers: export nnUNet_extTrainer=$(nnunet-autosam trainer-dir)"
    )


def check_nnunet_folders() -> list:
    results = []
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        value = os.environ.get(name)
        if value:
            results.append((True, f"{name}={value}"))
        else:
            results.append((False, f"{name} is not set: export {name}=/path/to/{name} (nnU-Net's own set-up)"))
    return results


def check_weights() -> list:
    """One line per encoder family; only a set-up where no family has real weights needs fixing."""
    lines = [line for family in encoders.families() for line in family.weights_status()]
    if any(ok for ok, _ in lines):
        return [(True, text) if ok else (None, text) for ok, text in lines]
    return lines


def check_accelerator() -> tuple:
    import torch

    if torch.cuda.is_available():
        return True, f"CUDA: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} device(s))"
    # Not a failure: everything runs on the CPU, only slowly with real SAM encoders.
    return True, (
        "no CUDA device: training runs on the CPU (pass -device cpu); lite_medsam suits a CPU, SAM's ViTs want a GPU"
    )


def check_cpu_precision() -> tuple:
    import torch

    from nnunet_autosam.utilities.errors import InputError
    from nnunet_autosam.utilities.precision import CPU_BF16_ENV, cpu_bf16_enabled, describe

    try:
        line = describe(torch.device("cpu"))
    except InputError as error:
        return False, str(error)
    if os.environ.get(CPU_BF16_ENV):
        return True, line
    other = ("0", "fp32") if cpu_bf16_enabled() else ("1", "bf16")
    return True, f"{line} ({CPU_BF16_ENV}={other[0]} to force {other[1]})"


def run_doctor(args) -> int:
    checks = [
        check_nnunet_version(),
        check_trainer_variable(),
        *check_nnunet_folders(),
        *check_weights(),
        check_accelerator(),
        check_cpu_precision(),
    ]
    for ok, line in checks:
        print(f"[{ {True: 'ok', False: 'FIX', None: '--'}[ok] }] {line}")
    print(
        "Data: `nnunet-autosam verify DATASET` checks every file of a raw dataset (complete, on one grid, "
        "known labels)."
    )
    return 0 if all(ok is not False for ok, _ in checks) else 1


def add_parser(subparsers) -> None:
    doctor = subparsers.add_parser("doctor", help="check nnU-Net, the trainer lookup, SAM weights and the GPU")
    doctor.set_defaults(func=run_doctor)
    folder = subparsers.add_parser("trainer-dir", help="print the folder to put in nnUNet_extTrainer")
    folder.set_defaults(func=lambda args: print(trainer_dir()))
