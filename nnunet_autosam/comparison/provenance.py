"""What a published comparison says about how it was made: the machine, the code's commit, every command run."""

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from nnunet_autosam.utilities.commands import Workspace
from nnunet_autosam.utilities.nnunet_paths import source_checkout


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def machine() -> str:
    """The machine in words: CPU model and cores, memory, and the GPU when one is used."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    text = f"{cpu}, {os.cpu_count()} cores, {memory_gb:.0f} GB"
    import torch

    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def code_version() -> str | None:
    """The git commit of the checkout the package runs from (``+ changes`` when its files differ), else None."""
    checkout = source_checkout()
    if checkout is None or not (checkout / ".git").exists():
        return None

    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    return commit + (" + changes" if git("status", "--porcelain", "--untracked-files=no") else "")


class LoggedWorkspace(Workspace):
    """A workspace appending every command it runs to commands.log: the exact commands, published.

    ``shown``: settings that differ from command to command (a training's steps), written before the command as
    shell assignments so that each logged line runs as it ran.
    """

    def __init__(self, root: Path, settings: dict, shown: dict | None = None):
        super().__init__(root, settings)
        self.log = Path(root) / "commands.log"
        self.settings = settings
        self.shown = shown or {}

    def run(self, *command: str) -> str:
        shown = (
            ("nnunet-autosam", *command[3:]) if command[:3] == (sys.executable, "-m", "nnunet_autosam.cli") else command
        )
        assignments = "".join(f"{key}={shlex.quote(value)} " for key, value in self.shown.items())
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(assignments + shlex.join(shown) + "\n")
        return super().run(*command)
