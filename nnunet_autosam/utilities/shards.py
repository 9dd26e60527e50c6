"""Shards of a list of work items: ``--shard i/n`` takes items i, i+n, i+2n, ... of the sorted list."""

from collections.abc import Sequence

from nnunet_autosam.utilities.errors import InputError


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
