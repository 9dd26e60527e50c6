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
from collections.abc import Callable
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

    def embed(self, x: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The stored embedding of ``x`` if there is one, else ``encode(x)``, stored for next time."""
        key = self.key(x)
        path = self.folder / key[:2] / f"{key}.npy"
        if path.is_file():
            return torch.from_numpy(np.load(path)).to(x.device)
        embedding = encode(x)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, embedding.detach().cpu().numpy())
        return embedding
