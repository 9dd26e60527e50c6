"""The torch device a command runs on: the one named, else CUDA where there is one, else the CPU."""

from nnunet_autosam.utilities.errors import InputError


def pick_device(name: str | None = None):
    """``name`` (cpu, cuda, cuda:N) as a torch.device, checked; None picks CUDA where available, else the CPU."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name}: no CUDA device here; use cpu")
    return device
