"""Frozen-encoder embeddings remembered across predictions: ``AUTOSAM_EMBEDDING_MEMO=DIR``.

Why: comparing heads and folds on one test set runs the same frozen encoder on the same tiles again
and again, and the encoder is nearly all of a prediction's cost (about a second per 256x256 slice for
LiteMedSAM on a CPU). With the variable set, each tile's embedding is stored once in DIR and read back
by every later prediction, of any head or fold, that sees the same tile.

The key is a SHA-256 over the encoder identity (type, input size, input mapping, channel strategy and
count, weights file hash),
the precision the encoder runs in on this device (fp32, or bf16 under autocast: nnunet_autosam.utilities.precision)
and the exact input tile (dtype, shape, bytes); the embedding is stored in fp32 as computed. A hit
therefore returns exactly what the encoder would compute, so predictions are the same labels as
without the memo (tested through nnUNetv2_predict). Only a frozen encoder loaded from a weights file
has an identity that pins its weights, so only such networks use the memo, and only in eval mode
(validation and prediction): augmented training patches never repeat. Files are written under a
temporary name and renamed, so concurrent predictions and interruptions never leave half an entry.
"""

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from nnunet_autosam.utilities.atomic import atomic_path
from nnunet_autosam.utilities.precision import embedding_precision

MEMO_ENV = "AUTOSAM_EMBEDDING_MEMO"


class EmbeddingMemo:
    def __init__(self, folder: Path, identity: dict):
        self.folder = Path(folder)
        self.identity = json.dumps(identity, sort_keys=True).encode()

    @classmethod
    def from_environment(cls, identity: dict) -> Optional["EmbeddingMemo"]:
        folder = os.environ.get(MEMO_ENV)
        return cls(Path(folder), identity) if folder else None

    def key(self, x: torch.Tensor) -> str:
        tile = x.detach().cpu().contiguous().numpy()
        digest = hashlib.sha256(self.identity)
        digest.update(f"{embedding_precision(x.device)}|{tile.dtype}{tile.shape}".encode())
        digest.update(tile.tobytes())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def store(self, key: str, embedding: torch.Tensor) -> None:
        with atomic_path(self.path(key)) as tmp, open(tmp, "wb") as handle:
            np.save(handle, embedding.detach().cpu().numpy())

    def embed(self, x: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The stored embedding of ``x`` if there is one, else ``encode(x)``, stored for next time."""
        key = self.key(x)
        path = self.path(key)
        if path.is_file():
            return torch.from_numpy(np.load(path)).to(x.device)
        embedding = encode(x)
        self.store(key, embedding)
        return embedding

    def fill(
        self, tiles: Iterable[torch.Tensor], encode: Callable[[torch.Tensor], torch.Tensor], batch_size: int
    ) -> int:
        """Store the embedding of every (1, C, H, W) tile not stored yet, ``batch_size`` tiles per encoder call
        (on a CPU, batches of 8-12 cost well under half the time per tile of one-tile calls); returns how many
        were computed. Batched, an embedding equals the one-tile result within float rounding, not bit for bit."""
        pending: dict = {}
        computed = 0

        def flush() -> int:
            batch = torch.cat(list(pending.values()))
            with torch.no_grad():
                embeddings = encode(batch)
            for index, key in enumerate(pending):
                self.store(key, embeddings[index : index + 1])
            count = len(pending)
            pending.clear()
            return count

        for tile in tiles:
            key = self.key(tile)
            if key in pending or self.path(key).is_file():
                continue
            pending[key] = tile
            if len(pending) == batch_size:
                computed += flush()
        if pending:
            computed += flush()
        return computed
