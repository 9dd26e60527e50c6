"""`nnunet-autosam cache`: build a dataset's cache ahead of training, resumable and shardable."""

import json

from nnunet_autosam.experiment_planning.plans import planned_configuration
from nnunet_autosam.experiment_planning.settings import CACHE_ENV, CacheMode, parse_mode
from nnunet_autosam.model.network import build_sam_network
from nnunet_autosam.training.embedding_cache.storage import CACHE_FOLDER, EmbeddingCache, refuse_regions
from nnunet_autosam.training.embedding_cache.views import training_view_sampler
from nnunet_autosam.utilities.devices import pick_device
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.precision import embedding_precision
from nnunet_autosam.utilities.shards import parse_shard, shard_cases


def cache_for_plans(dataset: str, plans_name: str, configuration: str, mode: CacheMode, device: str = "cpu"):
    """(cache, network, all case identifiers) for a dataset's plans, as the cache command uses them."""
    import torch
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    planned = planned_configuration(dataset, plans_name, configuration)
    base, configuration_manager, label_manager = planned.folder, planned.configuration_manager, planned.label_manager
    refuse_regions(label_manager)
    folder = base / configuration_manager.data_identifier
    if not folder.is_dir():
        raise InputError(f"{folder} not found: run nnUNetv2_plan_and_preprocess -d {dataset} -c {configuration}")
    dataset_class = infer_dataset_class(str(folder))
    cases = sorted(dataset_class.get_identifiers(str(folder)))
    data = dataset_class(str(folder), list(cases))
    network = build_sam_network(
        planned.settings, "linear", planned.num_channels, label_manager.num_segmentation_heads
    ).to(torch.device(device))
    network.eval()
    sampler = None
    if mode.kind == "cache_views":
        sampler = training_view_sampler(
            nnUNetTrainer, data, configuration_manager, label_manager, oversample_foreground_percent=0.33
        )
    cache = EmbeddingCache(
        base,
        network.identity,
        configuration_manager.data_identifier,
        configuration_manager.patch_size,
        mode,
        data,
        sampler,
        precision=embedding_precision(torch.device(device)),
    )
    return cache, network, cases


def run(args) -> None:

    mode = parse_mode(":".join(args.mode), "--mode")
    if not mode.enabled:
        raise InputError("--mode off builds nothing: use --mode cache or --mode cache_views K")
    device = str(pick_device(args.device))
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
    print(
        f"shard {index}/{count}: {len(report.built)} cases built ({report.samples_built} "
        f"{'slices' if mode.kind == 'cache' else 'views'}) in {report.seconds:.1f} s, {len(report.reused)} "
        f"already complete; cache {complete}/{len(cases)} cases complete"
    )
    print(cache.folder)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="precompute the frozen encoder's embeddings for training from the cache",
        description="Embed every 2D slice of the preprocessed dataset once (float16, memory-mapped, under "
        f"DatasetXXX/{CACHE_FOLDER}/). Train from it with {CACHE_ENV}=cache (or cache_views:K). Resumable: "
        "complete cases are kept. Shardable: run --shard i/n for i = 0..n-1, at once or in turn.",
    )
    parser.add_argument("dataset", metavar="DATASET", help="dataset id (27) or name (Dataset027_ACDC)")
    parser.add_argument("-p", "--plans", required=True, help="plans identifier (from nnunet-autosam plans)")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument(
        "--mode",
        nargs="+",
        default=["cache"],
        metavar="MODE",
        help="cache (one embedding per slice, default) or cache_views K (K augmented views)",
    )
    parser.add_argument("--shard", default="0/1", help="i/n: build only cases i, i+n, i+2n, ... (default 0/1: all)")
    parser.add_argument("--fold", type=int, help="only the training cases of this fold (splits_final.json)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda where available)")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per encoder pass (default: 8)")
    parser.set_defaults(func=run)
