"""Checks on image and label files before we trust them: complete NIfTI files, matching grids, known labels.

SimpleITK reads a truncated ``.nii.gz`` without an error and fills the missing voxels with zeros, so
a file cut short by an interrupted copy would be converted, trained on or scored as if it were whole.
:func:`nifti_problem` catches that: it streams the file once through Python's gzip reader (which
checks the end-of-stream marker, the CRC-32 and the length in the gzip trailer) and compares the
decompressed length with the voxel data the NIfTI-1 or NIfTI-2 header promises. Memory stays at one
chunk; all 400 files of ACDC's 100 training patients take about 1.5 s on one core.

Only ``.nii`` and ``.nii.gz`` files are checked this way. Other formats nnU-Net reads (``.nrrd``,
``.mha``, ``.png``, ``.tif``, ...) pass through unchecked beyond what their reader itself refuses.
"""

import gzip
import math
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from nnunet_autosam.utilities.errors import InputError

NIFTI_ENDINGS = (".nii", ".nii.gz")
CHUNK_BYTES = 1 << 20
GEOMETRY_ATOL = 1e-5
# sizeof_hdr, then where dim[8], bitpix and vox_offset sit, with their struct codes (NIfTI-1 and NIfTI-2 specs)
NIFTI_LAYOUTS = {
    348: {"dim": (40, "8h"), "bitpix": (72, "h"), "vox_offset": (108, "f")},
    540: {"dim": (16, "8q"), "bitpix": (14, "h"), "vox_offset": (168, "q")},
}
HEADER_BYTES = max(NIFTI_LAYOUTS)


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_ENDINGS)


def expected_nifti_length(header: bytes) -> int:
    """The byte count a single-file NIfTI must reach: voxel offset plus voxels times bytes per voxel.

    Raises ValueError when the bytes are not a NIfTI-1 or NIfTI-2 header.
    """
    if len(header) < 4:
        raise ValueError(f"it holds {len(header)} bytes, too few for a NIfTI header")
    for endian in "<>":
        size = struct.unpack(endian + "i", header[:4])[0]
        if size in NIFTI_LAYOUTS:
            break
    else:
        raise ValueError("it does not start with a NIfTI-1 or NIfTI-2 header")
    if len(header) < size:
        raise ValueError(f"it holds {len(header)} bytes, fewer than its {size}-byte NIfTI header")

    def field(name):
        offset, code = NIFTI_LAYOUTS[size][name]
        return struct.unpack_from(endian + code, header, offset)

    dims, (bitpix,), (vox_offset,) = field("dim"), field("bitpix"), field("vox_offset")
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1 : ndim + 1]) or bitpix < 8 or bitpix % 8:
        raise ValueError(f"its NIfTI header is corrupt (dim {list(dims)}, bitpix {bitpix})")
    return max(int(vox_offset), size) + math.prod(dims[1 : ndim + 1]) * (bitpix // 8)


def _stream_length(stream, first_bytes: int) -> tuple[bytes, int]:
    """(the first ``first_bytes`` bytes, the total length) of a binary stream, read one chunk at a time."""
    head, length = b"", 0
    while chunk := stream.read(CHUNK_BYTES):
        if len(head) < first_bytes:
            head += chunk[: first_bytes - len(head)]
        length += len(chunk)
    return head, length


def nifti_problem(path) -> str | None:
    """Why a .nii or .nii.gz file cannot be trusted (truncated, corrupt, unreadable), or None if it is whole.

    Files of other formats return None unchecked.
    """
    path = Path(path)
    if not is_nifti(path):
        return None
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as stream:
            head, length = _stream_length(stream, HEADER_BYTES)
    except EOFError:
        return "is truncated: its gzip stream ends before the end-of-stream marker"
    except (gzip.BadGzipFile, zlib.error) as error:
        return f"is corrupt: its gzip stream fails its checks ({error})"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    try:
        expected = expected_nifti_length(head)
    except ValueError as error:
        return f"is truncated or not NIfTI: {error}"
    if length < expected:
        return f"is truncated or corrupt: it holds {length} bytes of NIfTI data but its header promises {expected}"
    return None


def require_intact(path) -> None:
    """Stop in one line naming the file when :func:`nifti_problem` finds something wrong with it."""
    problem = nifti_problem(path)
    if problem:
        raise InputError(f"{path} {problem}; copy the file again")


@contextmanager
def itk_warnings_off():
    """Silence ITK while reading: every ACDC file triggers a harmless 'unexpected scales in sform'."""
    import SimpleITK as sitk

    was_on = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(was_on)


def geometry_mismatch(image, other, image_name: str = "its image") -> str | None:
    """How ``other``'s grid differs from ``image``'s (size, spacing, origin, direction), or None.

    Both are SimpleITK images or ImageFileReaders after ReadImageInformation.
    """
    for what in ("Size", "Spacing", "Origin", "Direction"):
        image_value, other_value = getattr(image, f"Get{what}")(), getattr(other, f"Get{what}")()
        if len(image_value) != len(other_value) or not np.allclose(
            image_value, other_value, rtol=0, atol=GEOMETRY_ATOL
        ):
            return f"{what.lower()} {tuple(other_value)} differs from {image_name}'s {tuple(image_value)}"
    return None


def unexpected_label_values(label, allowed) -> list:
    """The values of a SimpleITK label image that are not in ``allowed``, sorted."""
    import SimpleITK as sitk

    return sorted(set(np.unique(sitk.GetArrayViewFromImage(label)).tolist()) - set(allowed))
