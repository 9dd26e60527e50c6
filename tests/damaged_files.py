"""Ways a .nii.gz gets damaged in transit, applied in place, and a runner for the commands that must refuse them."""

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

NIFTI1_DIM3_OFFSET = 46  # dim[3] (slices) in a little-endian NIfTI-1 header, as ITK writes it


def truncate(path: Path) -> None:
    """Cut the file to its first half, as an interrupted copy does."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte(path: Path) -> None:
    """Flip one bit in the middle of the compressed stream."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def overpromise(path: Path) -> None:
    """A valid gzip stream whose NIfTI header claims one slice more than the voxel data holds."""
    data = bytearray(gzip.decompress(path.read_bytes()))
    (slices,) = struct.unpack_from("<h", data, NIFTI1_DIM3_OFFSET)
    struct.pack_into("<h", data, NIFTI1_DIM3_OFFSET, slices + 1)
    path.write_bytes(gzip.compress(bytes(data)))


# (which file of a case, damage, a word the one-line refusal must contain)
DAMAGES = {
    "truncated image": ("image", truncate, "truncated"),
    "truncated label": ("label", truncate, "truncated"),
    "flipped byte": ("image", flip_byte, "corrupt"),
    "header promises more voxels": ("label", overpromise, "header promises"),
}


def cli_run(*args: str) -> subprocess.CompletedProcess:
    """The command as a user runs it, with progress bars off so stderr holds only what the command says."""
    return subprocess.run(
        [sys.executable, "-m", "nnunet_autosam.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, TQDM_DISABLE="1"),
        timeout=180,
    )
