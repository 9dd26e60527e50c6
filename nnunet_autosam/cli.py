"""`nnunet-autosam`: the plugin's own commands, beside the stock nnU-Net CLI that trains and predicts.

Each command lives in its own module, which exposes ``add_parser(subparsers)``; the parser it adds
carries ``func`` (called with the parsed arguments).
"""

import argparse
import importlib
import sys

from nnunet_autosam import __version__

COMMAND_MODULES = (
    "nnunet_autosam.run.doctor",
    "nnunet_autosam.experiment_planning.plans",
    "nnunet_autosam.data.conversion",
    "nnunet_autosam.data.brats",
    "nnunet_autosam.data.neighbours",
    "nnunet_autosam.data.verify",
    "nnunet_autosam.data.splits",
    "nnunet_autosam.evaluation.metrics",
    "nnunet_autosam.evaluation.report",
    "nnunet_autosam.inference.zero_shot",
    "nnunet_autosam.inference.memo_prefill",
    "nnunet_autosam.training.embedding_cache.command",
    "nnunet_autosam.training.pseudo_labels",
    "nnunet_autosam.comparison.holdout",
    "nnunet_autosam.comparison.runs",
    "nnunet_autosam.run.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-autosam",
        description="SAM encoders with prompt-free heads for nnU-Net v2: set-up checks, plans, "
        "dataset conversion, few-label splits, evaluation and reports, and the few-label comparison.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return 0 if result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
