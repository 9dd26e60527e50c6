"""Write-then-rename helpers, so an interrupted command never leaves a half-written file or folder."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target):
    """Yield a temporary sibling path; on success rename it onto ``target`` (file or folder).

    The sibling sits in the same folder so the final rename is atomic on one filesystem. On any
    error the temporary file or folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    tmp_target = tmp / target.name
    try:
        yield tmp_target
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp_target, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(obj, target, **dump_kwargs) -> None:
    """Write ``obj`` as indented JSON to ``target`` atomically."""
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=dump_kwargs.pop("indent", 2), **dump_kwargs)
            f.write("\n")


def write_text(text: str, target) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
