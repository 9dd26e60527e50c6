"""Training batches from a built cache, drawn as nnU-Net's loader draws patches."""

import numpy as np

from nnunet_autosam.training.embedding_cache.storage import CachedSamples


class CachedBatches:
    """Endless random training batches from the cache, drawn like nnU-Net's loader draws patches.

    Each sample: a case uniformly at random, then one of its rows (a slice, or a view of one)
    uniformly at random; the batch positions nnU-Net forces to hold foreground (the last third, by
    its own rounding) draw only from the case's rows whose label has foreground (any row if none).
    Yields {'embedding': (B, 256*P, g, g) float32, 'target': (B, 1, py, px) int16, 'keys': cases}.
    """

    def __init__(self, samples: CachedSamples, batch_size: int, oversample_foreground_percent: float):
        self.samples = samples
        self.batch_size = batch_size
        self.oversample = oversample_foreground_percent

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        import torch

        embeddings, labels, keys = [], [], []
        for j in range(self.batch_size):
            force_fg = not j < round(self.batch_size * (1 - self.oversample))
            case_index = np.random.randint(len(self.samples.cases))
            _, case_labels, foreground = self.samples.arrays[case_index]
            pool = foreground if force_fg and len(foreground) else None
            row = int(np.random.choice(pool)) if pool is not None else np.random.randint(len(case_labels))
            embedding, label = self.samples.get(case_index, row)
            embeddings.append(embedding)
            labels.append(label)
            keys.append(self.samples.cases[case_index])
        return {
            "embedding": torch.from_numpy(np.stack(embeddings).astype(np.float32)),
            "target": torch.from_numpy(np.stack(labels).astype(np.int16))[:, None],
            "keys": keys,
        }
