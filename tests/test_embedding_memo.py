"""AUTOSAM_EMBEDDING_MEMO in-process: a hit is the encoder's own output, another tile is another entry.

The same claim through nnUNetv2_predict (bit-identical probabilities) is in test_end_to_end.py.
"""

import numpy as np
import pytest
import torch
from sam_files import write_sam_checkpoint

from nnunet_autosam.experiment_planning.settings import EncoderSettings
from nnunet_autosam.model.embedding_memo import MEMO_ENV
from nnunet_autosam.model.network import build_sam_network


@pytest.fixture
def tiny_file(tmp_path):
    return write_sam_checkpoint(tmp_path / "sam_tiny.pth", "tiny")


def test_each_tile_is_stored_once_and_read_back_as_computed(tiny_file, tmp_path, monkeypatch):
    monkeypatch.setenv(MEMO_ENV, str(tmp_path / "memo"))
    network = build_sam_network(EncoderSettings("tiny", 128, str(tiny_file)), "autosam", 1, 4).eval()
    tiles = torch.randn(2, 1, 1, 96, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        computed = [network.encode(tile) for tile in tiles]
        first = [network.embed(tile) for tile in tiles]
        entries = sorted((tmp_path / "memo").rglob("*.npy"))
        second = [network.embed(tile) for tile in tiles]
    assert len(entries) == 2  # one per distinct tile
    for expected, got_first, got_second in zip(computed, first, second):
        assert torch.equal(got_first, expected) and torch.equal(got_second, expected)
    assert not torch.equal(first[0], first[1])
    np.save(entries[0], np.zeros_like(np.load(entries[0])))  # what is stored is what is returned
    with torch.no_grad():
        assert any(not network.embed(tile).any() for tile in tiles)


def test_training_mode_file_less_and_trained_encoders_never_use_it(tiny_file, tmp_path, monkeypatch):
    monkeypatch.setenv(MEMO_ENV, str(tmp_path / "memo"))
    frozen = build_sam_network(EncoderSettings("tiny", 128, str(tiny_file)), "linear", 1, 2)
    with torch.no_grad():
        frozen.train()(torch.randn(1, 1, 64, 64))  # augmented training patches never repeat
    assert build_sam_network(EncoderSettings("tiny", 128), "linear", 1, 2).embedding_memo is None
    trained = build_sam_network(EncoderSettings("tiny", 128, str(tiny_file)), "linear", 1, 2, train_encoder=True)
    assert trained.embedding_memo is None
    assert not (tmp_path / "memo").exists()
