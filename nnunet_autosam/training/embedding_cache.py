"""Embedding cache: the frozen encoder's output for every 2D slice, computed once, so heads train from disk.

Modes (``AUTOSAM_EMBEDDING_CACHE``, or ``embedding_cache`` in the plans' ``sam_encoder`` entry; the
variable wins; on-the-fly is the default):

- ``off``: stock nnU-Net training, the encoder runs on every augmented patch.
- ``cache``: one embedding per slice. The slice is padded / centre-cropped to the configuration's
  patch size (data pad 0, label pad -1 -> 0, as nnU-Net's loader and RemoveLabelTansform do), so
  there is NO augmentation at all in training: spatial transforms cannot be applied to an
  embedding exactly, and intensity ones change it in ways a cache cannot reproduce.
- ``cache_views:K``: K augmented views per slice, made up front with nnU-Net's own training
  pipeline (the trainer's ``get_training_transforms`` on a crop at nnU-Net's initial patch size,
  the crop placed by nnU-Net's own ``nnUNetDataLoader.get_bbox`` with its foreground
  oversampling), then embedded. Training sees those K fixed views instead of a fresh draw each
  time: K x the build cost and storage of ``cache``, a finite sample of nnU-Net's augmentation.
  Each view is seeded from (case, slice, view), so any process rebuilds it bit for bit.

Layout, under the dataset's preprocessed folder::

    autosam_cache/<mode>_<encoder>_<input size>_<key>/
        manifest.json                 every field the key hashes, in clear
        cases/<case>/embeddings.npy   (slices*K, 256, G, G) float16 (G: the encoder's embedding grid), mmap_mode="r"
        cases/<case>/labels.npy       (slices*K, patch_y, patch_x) uint8
        cases/<case>/case.json        completion marker: counts, source signature, exact file sizes

The key is a SHA-256 over: cache format version, the encoder identity (type, input size, input
mapping, embedding width, checkpoint file SHA-256), the precision the encoder ran in (fp32, or bf16
under autocast: nnunet_autosam.utilities.precision), the preprocessing data identifier, the patch size, the
mode and K (and the nnU-Net version for views, whose transforms may change with it). Any
change gives a new folder. All cases of the dataset can be cached (so every fold shares one
cache); training needs only the cases of its fold.

A case is the unit of work and of resumption: it is written to a temporary folder and renamed into
place with its case.json, so a case folder is complete or absent. A case is used only if its
case.json parses, names the same source (the preprocessed files' sizes and the case's shape) and
counts, and both arrays have exactly the recorded byte size and the expected shape and dtype;
anything else (truncated, missing, stale) is rebuilt, never read.

Sharding: ``nnunet-autosam cache DATASET -p PLANS --shard i/n`` builds the cases i, i+n, i+2n, ...
of the sorted case list (of the fold's training cases with ``--fold``). Shards share nothing but
the folder, so they can run at once on several GPUs or machines with a shared disk. Training
reuses every complete case and builds the missing or invalid ones itself (logged, with a progress
bar), so a partial cache only costs time.
"""

import hashlib
import json
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional, Sequence

import numpy as np

from nnunet_autosam.model import encoders
from nnunet_autosam.utilities.atomic import atomic_path, write_json
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.model.network import build_sam_network
from nnunet_autosam.utilities.nnunet_paths import preprocessed_folder
from nnunet_autosam.utilities.precision import embedding_precision
from nnunet_autosam.experiment_planning.settings import CACHE_ENV, CacheMode, EncoderSettings, parse_mode

FORMAT_VERSION = 1
CACHE_FOLDER = "autosam_cache"
EMBEDDING_DTYPE = np.float16
LABEL_DTYPE = np.uint8
SOURCE_SUFFIXES = (".b2nd", "_seg.b2nd", ".npz")  # nnU-Net's packed case files (not the unpacked .npy)


# ---------------------------------------------------------------------------------------------- patches

def _labels_to_uint8(label: np.ndarray) -> np.ndarray:
    label = np.where(label < 0, 0, label)  # nnU-Net's padding/outside label -1 -> background (RemoveLabelTansform)
    if label.size and (label.max() > np.iinfo(LABEL_DTYPE).max):
        raise InputError(f"label value {int(label.max())} does not fit the cache's uint8 labels: train on the fly "
                         f"({CACHE_ENV}=off)")
    return label.astype(LABEL_DTYPE)


def centre_bbox(shape: Sequence[int], patch_size: Sequence[int]) -> list:
    """Half-open [start, end) per axis of a patch centred on the slice (start < 0 or end > shape pads)."""
    return [[(s - p) // 2, (s - p) // 2 + p] for s, p in zip(shape, patch_size)]


def centre_patch(data, seg, z: int, patch_size: Sequence[int]):
    """Slice ``z`` of a case (data, seg of shape (C, Z, Y, X)) padded / centre-cropped to ``patch_size``.

    Returns the (C, py, px) float32 patch and its (py, px) uint8 label, as the network sees it.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

    bbox = [[z, z + 1]] + centre_bbox(data.shape[2:], patch_size)
    patch = np.asarray(crop_and_pad_nd(data, bbox, 0), dtype=np.float32)[:, 0]
    label = np.asarray(crop_and_pad_nd(seg, bbox, -1))[0, 0]
    return patch, _labels_to_uint8(label)


class ViewSampler:
    """K augmented views of a slice, made by nnU-Net's own crop sampling and training transforms."""

    def __init__(self, dataset, label_manager, transforms, initial_patch_size, patch_size,
                 oversample_foreground_percent: float):
        from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

        self.transforms = transforms
        self.oversample = oversample_foreground_percent
        # Only its get_bbox is used: nnU-Net's crop placement (random, or around a foreground voxel).
        self.loader = nnUNetDataLoader(dataset, 1, list(initial_patch_size), list(patch_size), label_manager,
                                       oversample_foreground_percent=oversample_foreground_percent)

    def views(self, data, seg, class_locations: dict, z: int, count: int, seed: int):
        import torch
        from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
        from threadpoolctl import threadpool_limits

        in_slice = {key: _slice_locations(locations, z) for key, locations in class_locations.items()}
        patches, labels = [], []
        state = np.random.get_state()
        try:
            # One thread, as nnU-Net's loader augments: these small ops only lose to threading overhead.
            with torch.random.fork_rng(devices=[]), threadpool_limits(limits=1, user_api=None):
                np.random.seed(seed)
                torch.manual_seed(seed)
                for _ in range(count):
                    force_fg = bool(np.random.uniform() < self.oversample)
                    lbs, ubs = self.loader.get_bbox(np.array((1, *data.shape[2:])), force_fg, in_slice)
                    bbox = [[z, z + 1]] + [[lb, ub] for lb, ub in zip(lbs[1:], ubs[1:])]
                    image = torch.from_numpy(np.asarray(crop_and_pad_nd(data, bbox, 0), dtype=np.float32)[:, 0])
                    label = torch.from_numpy(np.asarray(crop_and_pad_nd(seg, bbox, -1)).astype(np.int16)[:, 0])
                    with torch.no_grad():
                        out = self.transforms(image=image, segmentation=label)
                    patches.append(out["image"].numpy().astype(np.float32))
                    labels.append(_labels_to_uint8(out["segmentation"].numpy()[0]))
        finally:
            np.random.set_state(state)
        return np.stack(patches), np.stack(labels)


def _slice_locations(locations: np.ndarray, z: int) -> np.ndarray:
    """nnU-Net's per-case foreground voxels (rows: channel, z, y, x) inside slice z, with z set to 0."""
    locations = np.asarray(locations)
    if locations.size == 0:
        return locations
    inside = locations[locations[:, 1] == z].copy()
    inside[:, 1] = 0
    return inside


def training_view_sampler(trainer_class, dataset, configuration_manager, label_manager,
                          oversample_foreground_percent: float) -> ViewSampler:
    """The sampler for ``cache_views``, from nnU-Net's own augmentation settings and the trainer's transforms.

    The settings hook runs on a stand-in holding only what it reads: the cache command has no trainer
    (no results folder to create one in), and a real trainer must keep its own inference mirroring.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    stand_in = SimpleNamespace(configuration_manager=configuration_manager,
                               print_to_log_file=lambda *args, **kwargs: None)
    rotation, dummy_2d, initial_patch_size, mirror_axes = \
        nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size(stand_in)
    patch_size = configuration_manager.patch_size
    transforms = trainer_class.get_training_transforms(
        patch_size, rotation, None, mirror_axes, dummy_2d,
        use_mask_for_norm=configuration_manager.use_mask_for_norm, is_cascaded=False,
        foreground_labels=label_manager.foreground_labels, regions=None, ignore_label=label_manager.ignore_label)
    return ViewSampler(dataset, label_manager, transforms, initial_patch_size, patch_size,
                       oversample_foreground_percent)


# ------------------------------------------------------------------------------------------------ cache

def cache_key_fields(identity: dict, data_identifier: str, patch_size, mode: CacheMode, precision: str) -> dict:
    fields = {
        "format": FORMAT_VERSION,
        "encoder_type": identity["encoder_type"],
        "input_size": int(identity["input_size"]),
        "input_mapping": identity["input_mapping"],
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


def _npy_ok(path: Path, size: int, shape: tuple, dtype) -> Optional[str]:
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

    def __init__(self, preprocessed_base, identity: dict, data_identifier: str, patch_size, mode: CacheMode,
                 dataset, view_sampler: Optional[ViewSampler] = None, *, precision: str):
        if not mode.enabled:
            raise ValueError("EmbeddingCache needs a cache mode")
        if mode.kind == "cache_views" and view_sampler is None:
            raise ValueError("cache_views needs a view sampler")
        self.mode = mode
        self.patch_size = tuple(int(p) for p in patch_size)
        self.fields = cache_key_fields(identity, data_identifier, patch_size, mode, precision)
        self.key = cache_key(self.fields)
        name = f"{mode.kind}{mode.views if mode.kind == 'cache_views' else ''}_{identity['encoder_type']}_" \
               f"{int(identity['input_size'])}_{self.key[:16]}"
        self.folder = Path(preprocessed_base) / CACHE_FOLDER / name
        self.grid = encoders.family(identity["encoder_type"]).embedding_grid(identity["encoder_type"],
                                                                             int(identity["input_size"]))
        self.embedding_dim = int(identity["embedding_dim"])
        self.dataset = dataset
        self.view_sampler = view_sampler

    # ---- layout and checks

    def case_folder(self, case: str) -> Path:
        return self.folder / "cases" / case

    def _source_signature(self, case: str) -> dict:
        source = Path(self.dataset.source_folder)
        files = {suffix: (source / f"{case}{suffix}").stat().st_size
                 for suffix in SOURCE_SUFFIXES if (source / f"{case}{suffix}").is_file()}
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

    def case_problem(self, case: str, signature: Optional[dict] = None) -> Optional[str]:
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
        for name, shape, dtype in (("embeddings.npy", embedding_shape, EMBEDDING_DTYPE),
                                   ("labels.npy", label_shape, LABEL_DTYPE)):
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
        return self.view_sampler.views(data, seg, properties["class_locations"], z, self.mode.views,
                                       self.view_seed(case, z))

    def build_case(self, case: str, network, batch_size: int = 8, progress=None) -> int:
        """Embed every slice (and view) of ``case`` and write its folder atomically; returns the sample count."""
        import torch

        data, seg, _, properties = self.dataset.load_case(case)
        signature = self._source_signature(case)
        slices, views = int(data.shape[1]), self.mode.views
        samples = slices * views
        if data.shape[0] != 1:
            raise InputError(f"case {case} has {data.shape[0]} channels; SAM's encoders take one")
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
                labels[z * views:(z + 1) * views] = label
                pending.extend(patch)
                while len(pending) >= batch_size or (z == slices - 1 and pending):
                    chunk = np.stack(pending[:batch_size])
                    pending = pending[batch_size:]
                    with torch.no_grad():
                        embedded = network.encode(torch.from_numpy(chunk).to(device))
                    embeddings[start:start + len(chunk)] = embedded.float().cpu().numpy().astype(EMBEDDING_DTYPE)
                    start += len(chunk)
                    if progress is not None:
                        progress.update(len(chunk))
            foreground = [bool(labels[i].any()) for i in range(samples)]
            embeddings.flush()
            labels.flush()
            del embeddings, labels
            info = {"case": case, "slices": slices, "views": views, "samples": samples, "source": signature,
                    "foreground": foreground,
                    "bytes": {name: (tmp / name).stat().st_size for name in ("embeddings.npy", "labels.npy")}}
            (tmp / "case.json").write_text(json.dumps(info, indent=1) + "\n")
        return samples

    def ensure(self, cases: Sequence[str], network, batch_size: int = 8, log: Callable = print,
               desc: str = "embedding cache") -> BuildReport:
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
            with tqdm(total=sum(sizes.values()), desc=desc, unit="slice" if self.mode.kind == "cache" else "view",
                      dynamic_ncols=True) as progress:
                for case in todo:
                    built += self.build_case(case, network, batch_size, progress)
        return BuildReport(todo, reused, rebuilt, built, time.perf_counter() - started)

    def open(self, cases: Sequence[str]) -> "CachedSamples":
        """Memory-map the given (complete) cases; refuses any that is not."""
        arrays = []
        for case in cases:
            problem = self.case_problem(case)
            if problem is not None:
                raise InputError(f"embedding cache {self.folder} case {case}: {problem}; rebuild it with "
                                 f"nnunet-autosam cache (or let training build it)")
            folder = self.case_folder(case)
            info = json.loads((folder / "case.json").read_text())
            arrays.append((np.load(folder / "embeddings.npy", mmap_mode="r"),
                           np.load(folder / "labels.npy", mmap_mode="r"),
                           np.flatnonzero(np.asarray(info["foreground"], dtype=bool))))
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


class CachedBatches:
    """Endless random training batches from the cache, drawn like nnU-Net's loader draws patches.

    Each sample: a case uniformly at random, then one of its rows (a slice, or a view of one)
    uniformly at random; the batch positions nnU-Net forces to hold foreground (the last third, by
    its own rounding) draw only from the case's rows whose label has foreground (any row if none).
    Yields {'embedding': (B, 256, g, g) float32, 'target': (B, 1, py, px) int16, 'keys': cases}.
    """

    def __init__(self, samples: CachedSamples, batch_size: int, oversample_foreground_percent: float):
        self.samples = samples
        self.batch_size = batch_size
        self.oversample = oversample_foreground_percent

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        import torch

        embeddings, labels, keys = [], [], []
        for j in range(self.batch_size):
            force_fg = not j < round(self.batch_size * (1 - self.oversample))
            case_index = np.random.randint(len(self.samples.cases))
            _, case_labels, foreground = self.samples.arrays[case_index]
            pool = foreground if force_fg and len(foreground) else None
            row = int(np.random.choice(pool)) if pool is not None else np.random.randint(len(case_labels))
            embedding, label = self.samples.get(case_index, row)
            embeddings.append(embedding)
            labels.append(label)
            keys.append(self.samples.cases[case_index])
        return {"embedding": torch.from_numpy(np.stack(embeddings).astype(np.float32)),
                "target": torch.from_numpy(np.stack(labels).astype(np.int16))[:, None], "keys": keys}


# -------------------------------------------------------------------------------------------------- CLI

def parse_shard(text: str) -> tuple:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if count < 1 or not 0 <= index < count:
        raise InputError(f"--shard {text!r} is not i/n with 0 <= i < n: use e.g. --shard 0/4")
    return index, count


def shard_cases(cases: Sequence[str], index: int, count: int) -> list:
    """Shard ``index`` of ``count``: the cases index, index+count, ... of the sorted list."""
    return sorted(cases)[index::count]


def cache_for_plans(dataset: str, plans_name: str, configuration: str, mode: CacheMode, device: str = "cpu"):
    """(cache, network, all case identifiers) for a dataset's plans, as the cache command uses them."""
    import torch
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    base = preprocessed_folder(dataset)
    plans_file = base / f"{plans_name}.json"
    if not plans_file.is_file():
        raise InputError(f"{plans_file} not found: write it with nnunet-autosam plans {dataset} ... and pass its "
                         f"identifier with -p")
    plans_manager = PlansManager(str(plans_file))
    if configuration not in plans_manager.available_configurations:
        raise InputError(f"plans {plans_name} have no configuration {configuration!r}")
    configuration_manager = plans_manager.get_configuration(configuration)
    if len(configuration_manager.patch_size) != 2:
        raise InputError(f"configuration {configuration!r} is 3D; the embedding cache is for the 2d configuration")
    dataset_json = json.loads((base / "dataset.json").read_text())
    label_manager = plans_manager.get_label_manager(dataset_json)
    check_label_based(label_manager)
    folder = base / configuration_manager.data_identifier
    if not folder.is_dir():
        raise InputError(f"{folder} not found: run nnUNetv2_plan_and_preprocess -d {dataset} -c {configuration}")
    dataset_class = infer_dataset_class(str(folder))
    cases = sorted(dataset_class.get_identifiers(str(folder)))
    data = dataset_class(str(folder), list(cases))
    settings = EncoderSettings.from_configuration(configuration_manager.configuration)
    network = build_sam_network(settings, "linear", 1, label_manager.num_segmentation_heads).to(torch.device(device))
    network.eval()
    sampler = None
    if mode.kind == "cache_views":
        sampler = training_view_sampler(nnUNetTrainer, data, configuration_manager,
                                        label_manager, oversample_foreground_percent=0.33)
    cache = EmbeddingCache(base, network.identity, configuration_manager.data_identifier,
                           configuration_manager.patch_size, mode, data, sampler,
                           precision=embedding_precision(torch.device(device)))
    return cache, network, cases


def check_label_based(label_manager) -> None:
    if label_manager.has_regions:
        raise InputError(f"this dataset trains on regions; the embedding cache stores plain labels: "
                         f"train on the fly ({CACHE_ENV}=off)")


def run(args) -> None:
    import torch

    mode = parse_mode(":".join(args.mode), "--mode")
    if not mode.enabled:
        raise InputError("--mode off builds nothing: use --mode cache or --mode cache_views K")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device here; use --device cpu")
    index, count = parse_shard(args.shard)
    cache, network, cases = cache_for_plans(args.dataset, args.plans, args.configuration, mode, device)
    if args.fold is not None:
        splits_file = cache.folder.parents[1] / "splits_final.json"
        if not splits_file.is_file():
            raise InputError(f"--fold {args.fold}: {splits_file} not found; write splits first or drop --fold")
        splits = json.loads(splits_file.read_text())
        if not 0 <= args.fold < len(splits):
            raise InputError(f"--fold {args.fold}: {splits_file} has folds 0..{len(splits) - 1}")
        cases = sorted(splits[args.fold]["train"])
    mine = shard_cases(cases, index, count)
    report = cache.ensure(mine, network, args.batch_size, desc=f"embedding cache shard {index}/{count}")
    complete = sum(cache.case_problem(case) is None for case in cases)
    print(f"shard {index}/{count}: {len(report.built)} cases built ({report.samples_built} "
          f"{'slices' if mode.kind == 'cache' else 'views'}) in {report.seconds:.1f} s, {len(report.reused)} "
          f"already complete; cache {complete}/{len(cases)} cases complete")
    print(cache.folder)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "cache", help="precompute the frozen encoder's embeddings for training from the cache",
        description="Embed every 2D slice of the preprocessed dataset once (float16, memory-mapped, under "
                    f"DatasetXXX/{CACHE_FOLDER}/). Train from it with {CACHE_ENV}=cache (or cache_views:K). Resumable: "
                    "complete cases are kept. Shardable: run --shard i/n for i = 0..n-1, at once or in turn.")
    parser.add_argument("dataset", metavar="DATASET", help="dataset id (27) or name (Dataset027_ACDC)")
    parser.add_argument("-p", "--plans", required=True, help="plans identifier (from nnunet-autosam plans)")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("--mode", nargs="+", default=["cache"], metavar="MODE",
                        help="cache (one embedding per slice, default) or cache_views K (K augmented views)")
    parser.add_argument("--shard", default="0/1", help="i/n: build only cases i, i+n, i+2n, ... (default 0/1: all)")
    parser.add_argument("--fold", type=int, help="only the training cases of this fold (splits_final.json)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda where available)")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per encoder pass (default: 8)")
    parser.set_defaults(func=run)
