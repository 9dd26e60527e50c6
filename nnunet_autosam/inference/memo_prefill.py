"""`nnunet-autosam prefill-memo`: embed the tiles nnUNetv2_predict will ask for, in batches, before it runs.

Why: nnU-Net's sliding window calls the network on one tile at a time, and a frozen SAM encoder on a CPU
costs well over twice as much per tile that way as in batches of 8-12 (benchmarks/speed.py). With
``AUTOSAM_EMBEDDING_MEMO`` set, this command replays nnU-Net's own preprocessing (the plans' preprocessor,
``run_case``) and tiling (``pad_nd_image`` and the predictor's sliding-window slicers, at nnUNetv2_predict's
default step 0.5) for a folder of images, embeds every tile not yet in the memo in batches, and stores it
under the key the network will look up. nnUNetv2_predict then finds every tile in the memo, for every head
and fold on the same encoder. The memo holds embeddings only, so no trained fold is needed.

A batched embedding equals the one-tile one within float rounding, not bit for bit (the memo's own
entries, written by a prediction, are exact). Mirrored tiles (``AUTOSAM_MIRROR_TTA=1``) are not prefilled:
a prediction still computes them one by one.
"""

from pathlib import Path

from nnunet_autosam.experiment_planning.plans import planned_configuration
from nnunet_autosam.model.embedding_memo import MEMO_ENV
from nnunet_autosam.model.network import build_sam_network
from nnunet_autosam.utilities.devices import pick_device
from nnunet_autosam.utilities.errors import InputError

DEFAULT_STEP_SIZE = 0.5  # nnUNetv2_predict's -step_size default


def case_tiles(predictor, data):
    """The (1, C, py, px) float32 tiles nnU-Net's sliding window hands the network for one preprocessed case."""
    import torch
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    image = torch.from_numpy(data).to(dtype=torch.float32, memory_format=torch.contiguous_format)
    padded, _ = pad_nd_image(image, predictor.configuration_manager.patch_size, "constant", {"value": 0}, True, None)
    for slicer in predictor._internal_get_sliding_window_slicers(padded.shape[1:]):
        yield torch.clone(padded[slicer][None], memory_format=torch.contiguous_format)


def prefill_memo(
    dataset: str,
    plans_name: str,
    images: Path,
    device: str = "cpu",
    batch_size: int = 8,
    configuration: str = "2d",
    step_size: float = DEFAULT_STEP_SIZE,
) -> tuple[int, int]:
    """Fill the memo for every case in ``images``; returns (cases, tiles computed), (0, 0) for an encoder without
    a weights file, whose embeddings the memo never keeps."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder
    from tqdm import tqdm

    planned = planned_configuration(dataset, plans_name, configuration)
    network = build_sam_network(
        planned.settings, "linear", planned.num_channels, planned.label_manager.num_segmentation_heads
    )
    memo = network.embedding_memo
    if network.store_encoder:
        return 0, 0  # a random encoder (no weights file): the memo never keeps its embeddings
    if memo is None:
        raise InputError(f"{MEMO_ENV} is not set: export {MEMO_ENV}=DIR, the folder nnUNetv2_predict will read")
    if not Path(images).is_dir():
        raise InputError(f"images folder {images} not found: pass -i the folder nnUNetv2_predict will read")
    torch_device = pick_device(device)
    network.to(torch_device).eval()
    predictor = nnUNetPredictor(tile_step_size=step_size, use_mirroring=False, device=torch_device, allow_tqdm=False)
    predictor.manual_initialization(
        network,
        planned.plans_manager,
        planned.configuration_manager,
        None,
        planned.dataset_json,
        "prefill-memo",
        None,
    )
    cases = create_lists_from_splitted_dataset_folder(str(images), planned.dataset_json["file_ending"])
    if not cases:
        raise InputError(f"{images} holds no CASE_0000{planned.dataset_json['file_ending']} images to prefill")
    preprocessor = planned.configuration_manager.preprocessor_class(verbose=False)
    computed = 0
    for files in tqdm(cases, desc="prefilling the embedding memo", unit="case", dynamic_ncols=True):
        data, _, _ = preprocessor.run_case(
            files, None, planned.plans_manager, planned.configuration_manager, planned.dataset_json
        )
        tiles = (tile.to(torch_device) for tile in case_tiles(predictor, data))
        computed += memo.fill(tiles, network.encode, batch_size)
    return len(cases), computed


def run(args) -> None:
    cases, computed = prefill_memo(
        args.dataset, args.plans, args.input, args.device, args.batch_size, args.configuration, args.step_size
    )
    print(f"prefilled the embedding memo for {cases} cases: {computed} tiles embedded, the rest already there")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prefill-memo",
        help="embed the tiles nnUNetv2_predict will read into $AUTOSAM_EMBEDDING_MEMO, in batches",
        description=f"With ${MEMO_ENV} set: preprocess and tile the images as nnUNetv2_predict does and embed "
        "every tile not yet in the memo in batches, so that the predictions of every head and fold on these "
        "plans read them instead of running the encoder one tile at a time.",
    )
    parser.add_argument("-i", "--input", type=Path, required=True, help="images folder (as nnUNetv2_predict -i)")
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    parser.add_argument("-p", "--plans", required=True, help="SAM plans identifier (nnunet-autosam plans)")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("--device", help="cuda or cpu (default: cuda where available)")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per encoder call (default: 8)")
    parser.add_argument(
        "--step-size", type=float, default=DEFAULT_STEP_SIZE, help="as nnUNetv2_predict -step_size (default: 0.5)"
    )
    parser.set_defaults(func=run)
