"""One cache folder per key: the key, the per-case layout, the checks that a case is complete, the build.

See the package docstring for the layout and the key.
"""

import hashlib
import json
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_autosam.experiment_planning.settings import CacheMode
from nnunet_autosam.model import encoders
from nnunet_autosam.training.embedding_cache.views import LABEL_DTYPE, ViewSampler, centre_patch
from nnunet_autosam.utilities.atomic import atomic_path, write_json
from nnunet_autosam.utilities.errors import InputError

FORMAT_VERSION = 1
CACHE_FOLDER = "autosam_cache"
EMBEDDING_DTYPE = np.float16
SOURCE_SUFFIXES = (".b2nd", "_seg.b2nd", ".npz")  # nnU-Net's packed case files (not the unpacked .npy)


def cache_key_fields(identity: dict, data_identifier: str, patch_size, mode: CacheMode, precision: str) -> dict:
    fields = {
        "format": FORMAT_VERSION,
        "encoder_type": identity["encoder_type"],
        "input_size": int(identity["input_size"]),
        "input_mapping": identity["input_mapping"],
        "channels": identity["channels"],
        "embedding_dim": int(identity["embedding_dim"]),
        "checkpoint_sha256": identity.get("checkpoint_sha256"),
        "precision": precision,
        "data_identifier": data_identifier,
        "patch_size": [int(p) for p in patch_size],
        "mode": mode.kind,
        "views": mode.views,
    }
    if mode.kind == "cache_views":
        from importlib.metadata import version

        fields["augmentation"] = f"nnunetv2 {version('nnunetv2')} training transforms, seeded per case/slice/view"
    return fields


def cache_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _npy_ok(path: Path, size: int, shape: tuple, dtype) -> str | None:
    """None if ``path`` is a complete .npy of this shape and dtype, else why not."""
    if not path.is_file():
        return f"{path.name} is missing"
    actual = path.stat().st_size
    if actual != size:
        return f"{path.name} is {actual} bytes, expected {size}"
    try:
        array = np.load(path, mmap_mode="r")
    except Exception as error:  # a damaged header raises ValueError or others
        return f"{path.name} cannot be read ({type(error).__name__})"
    if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        return f"{path.name} holds {array.shape} {array.dtype}, expected {tuple(shape)} {np.dtype(dtype)}"
    return None


@dataclass
class BuildReport:
    built: list
    reused: list
    rebuilt: dict  # case -> why the old one was not used
    samples_built: int
    seconds: float


class EmbeddingCache:
    """One cache folder (one key) for one preprocessed dataset configuration."""

    def __init__(
        self,
        preprocessed_base,
        identity: dict,
        data_identifier: str,
        patch_size,
        mode: CacheMode,
        dataset,
        view_sampler: ViewSampler | None = None,
        *,
        precision: str,
    ):
        if not mode.enabled:
            raise ValueError("EmbeddingCache needs a cache mode")
        if mode.kind == "cache_views" and view_sampler is None:
            raise ValueError("cache_views needs a view sampler")
        self.mode = mode
        self.patch_size = tuple(int(p) for p in patch_size)
        self.fields = cache_key_fields(identity, data_identifier, patch_size, mode, precision)
        self.key = cache_key(self.fields)
        name = (
            f"{mode.kind}{mode.views if mode.kind == 'cache_views' else ''}_{identity['encoder_type']}_"
            f"{int(identity['input_size'])}_{self.key[:16]}"
        )
        self.folder = Path(preprocessed_base) / CACHE_FOLDER / name
        self.grid = encoders.family(identity["encoder_type"]).embedding_grid(
            identity["encoder_type"], int(identity["input_size"])
        )
        self.embedding_dim = int(identity["embedding_dim"])
        self.dataset = dataset
        self.view_sampler = view_sampler

    # ---- layout and checks

    def case_folder(self, case: str) -> Path:
        return self.folder / "cases" / case

    def _source_signature(self, case: str) -> dict:
        source = Path(self.dataset.source_folder)
        files = {
            suffix: (source / f"{case}{suffix}").stat().st_size
            for suffix in SOURCE_SUFFIXES
            if (source / f"{case}{suffix}").is_file()
        }
        data, _, _, _ = self.dataset.load_case(case)
        return {"shape": [int(s) for s in data.shape], "file_bytes": files}

    def _shapes(self, samples: int) -> tuple:
        return ((samples, self.embedding_dim, self.grid, self.grid), (samples, *self.patch_size))

    def check_manifest(self) -> None:
        """Make sure manifest.json holds this key's fields; a foreign folder under our name is wiped."""
        manifest = self.folder / "manifest.json"
        if manifest.is_file():
            try:
                if json.loads(manifest.read_text()) == self.fields:
                    return
            except (OSError, ValueError):
                pass
            shutil.rmtree(self.folder / "cases", ignore_errors=True)
        write_json(self.fields, manifest)

    def case_problem(self, case: str, signature: dict | None = None) -> str | None:
        """None if the case's cache is complete and current, else why it must be (re)built."""
        folder = self.case_folder(case)
        marker = folder / "case.json"
        if not marker.is_file():
            return "not built" if not folder.exists() else "incomplete (no case.json)"
        try:
            info = json.loads(marker.read_text())
            samples = int(info["samples"])
            recorded_bytes = dict(info["bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            return "case.json is unreadable"
        signature = signature or self._source_signature(case)
        if info.get("source") != signature:
            return "the preprocessed case changed"
        slices = signature["shape"][1]
        if info.get("slices") != slices or info.get("views") != self.mode.views or samples != slices * self.mode.views:
            return "slice or view counts differ"
        embedding_shape, label_shape = self._shapes(samples)
        for name, shape, dtype in (
            ("embeddings.npy", embedding_shape, EMBEDDING_DTYPE),
            ("labels.npy", label_shape, LABEL_DTYPE),
        ):
            problem = _npy_ok(folder / name, recorded_bytes.get(name, -1), shape, dtype)
            if problem:
                return problem
        if len(info.get("foreground", [])) != samples:
            return "case.json lacks the foreground flags"
        return None

    # ---- building

    def view_seed(self, case: str, z: int) -> int:
        """The seed of slice ``z``'s views: any process rebuilds them bit for bit."""
        return zlib.crc32(f"{self.key}|{case}|{z}".encode())

    def _patches(self, case: str, data, seg, properties, z: int):
        if self.mode.kind == "cache":
            patch, label = centre_patch(data, seg, z, self.patch_size)
            return patch[None], label[None]
        assert self.view_sampler is not None  # __init__ requires one for cache_views
        return self.view_sampler.views(
            data, seg, properties["class_locations"], z, self.mode.views, self.view_seed(case, z)
        )

    def build_case(self, case: str, network, batch_size: int = 8, progress=None) -> int:
        """Embed every slice (and view) of ``case`` and write its folder atomically; returns the sample count."""
        import torch

        data, seg, _, properties = self.dataset.load_case(case)
        signature = self._source_signature(case)
        slices, views = int(data.shape[1]), self.mode.views
        samples = slices * views
        embedding_shape, label_shape = self._shapes(samples)
        device = next(network.parameters()).device
        self.check_manifest()
        with atomic_path(self.case_folder(case)) as tmp:
            tmp.mkdir()
            embeddings = np.lib.format.open_memmap(tmp / "embeddings.npy", "w+", EMBEDDING_DTYPE, embedding_shape)
            labels = np.lib.format.open_memmap(tmp / "labels.npy", "w+", LABEL_DTYPE, label_shape)
            pending, start = [], 0
            for z in range(slices):
                patch, label = self._patches(case, data, seg, properties, z)
                labels[z * views : (z + 1) * views] = label
                pending.extend(patch)
                while len(pending) >= batch_size or (z == slices - 1 and pending):
                    chunk = np.stack(pending[:batch_size])
                    pending = pending[batch_size:]
                    with torch.no_grad():
                        embedded = network.encode(torch.from_numpy(chunk).to(device))
                    embeddings[start : start + len(chunk)] = embedded.float().cpu().numpy().astype(EMBEDDING_DTYPE)
                    start += len(chunk)
                    if progress is not None:
                        progress.update(len(chunk))
            foreground = [bool(labels[i].any()) for i in range(samples)]
            embeddings.flush()
            labels.flush()
            del embeddings, labels
            info = {
                "case": case,
                "slices": slices,
                "views": views,
                "samples": samples,
                "source": signature,
                "foreground": foreground,
                "bytes": {name: (tmp / name).stat().st_size for name in ("embeddings.npy", "labels.npy")},
            }
            (tmp / "case.json").write_text(json.dumps(info, indent=1) + "\n")
        return samples

    def ensure(
        self, cases: Sequence[str], network, batch_size: int = 8, log: Callable = print, desc: str = "embedding cache"
    ) -> BuildReport:
        """Build every case of ``cases`` that is not complete and current; reuse the others."""
        from tqdm import tqdm

        started = time.perf_counter()
        self.check_manifest()
        todo, reused, rebuilt, sizes = [], [], {}, {}
        for case in cases:
            signature = self._source_signature(case)
            problem = self.case_problem(case, signature)
            if problem is None:
                reused.append(case)
                continue
            if problem != "not built":
                rebuilt[case] = problem
                log(f"embedding cache: rebuilding {case}: {problem}")
            todo.append(case)
            sizes[case] = signature["shape"][1] * self.mode.views
        built = 0
        if todo:
            with tqdm(
                total=sum(sizes.values()),
                desc=desc,
                unit="slice" if self.mode.kind == "cache" else "view",
                dynamic_ncols=True,
            ) as progress:
                for case in todo:
                    built += self.build_case(case, network, batch_size, progress)
        return BuildReport(todo, reused, rebuilt, built, time.perf_counter() - started)

    def open(self, cases: Sequence[str]) -> "CachedSamples":
        """Memory-map the given (complete) cases; refuses any that is not."""
        arrays = []
        for case in cases:
            problem = self.case_problem(case)
            if problem is not None:
                raise InputError(
                    f"embedding cache {self.folder} case {case}: {problem}; rebuild it with "
                    f"nnunet-autosam cache (or let training build it)"
                )
            folder = self.case_folder(case)
            info = json.loads((folder / "case.json").read_text())
            arrays.append(
                (
                    np.load(folder / "embeddings.npy", mmap_mode="r"),
                    np.load(folder / "labels.npy", mmap_mode="r"),
                    np.flatnonzero(np.asarray(info["foreground"], dtype=bool)),
                )
            )
        return CachedSamples(list(cases), arrays)


class CachedSamples:
    """The memory-mapped (embedding, label) pairs of some cases."""

    def __init__(self, cases: list, arrays: list):
        self.cases = cases
        self.arrays = arrays

    def __len__(self) -> int:
        return sum(len(labels) for _, labels, _ in self.arrays)

    def get(self, case_index: int, row: int):
        embeddings, labels, _ = self.arrays[case_index]
        return np.asarray(embeddings[row]), np.asarray(labels[row])


def refuse_regions(label_manager) -> None:
    """The heads, the cache and the report treat labels as one class per pixel; BraTS-style regions (whole tumour,
    tumour core, ...) overlap, and nothing here is built or tested for them."""
    if label_manager.has_regions:
        raise InputError(
            "this dataset has region-based labels (regions_class_order), which the SAM heads do not train: "
            "use plain labels (one class per voxel), or train it with stock nnU-Net (-tr nnUNetTrainer)"
        )
