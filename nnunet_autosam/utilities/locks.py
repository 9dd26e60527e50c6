"""An exclusive lock on a file: shards started at once on one output folder prepare it once, and processes started
at once on one machine time the CPU bf16 probe once."""

import fcntl
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(lock_file: Path):
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
