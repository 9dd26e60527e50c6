"""A SAM head learns something: trained on a few slices from cached embeddings, through the trainer's own
training step, it beats a constant (all-background, the majority class) prediction on a held-out slice.

The end-to-end tests would pass with a network that predicts background everywhere; this one would not.
Synthetic cardiac-like data (nnunet_autosam/data/synthetic.py: a bright LV cavity, a dark myocardial ring, a
bright RV crescent in noisy tissue) and the random `tiny` encoder at 128: seeded, and a few seconds.
"""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunet_autosam.data.synthetic import write_synthetic_acdc
from nnunet_autosam.experiment_planning.settings import EncoderSettings
from nnunet_autosam.model.network import build_sam_network
from nnunet_autosam.training.embedding_cache.loader import CachedBatches
from nnunet_autosam.training.embedding_cache.storage import CachedSamples
from nnunet_autosam.training.trainers import AutoSAMTrainer

pytestmark = pytest.mark.slow  # a head trained for many steps

STEPS = 100


def read_frame(folder, patient: str, frame: int):
    """(z-scored image, labels) of one frame, as nnU-Net's ZScore normalisation sees the case."""
    path = folder / "training" / patient / f"{patient}_frame{frame:02d}.nii.gz"
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path).replace(".nii.gz", "_gt.nii.gz")))
    return (image - image.mean()) / image.std(), labels


def cached_trainer(network):
    """An AutoSAMTrainer holding just what its train_step reads (nnU-Net's __init__ needs a dataset on disk)."""
    trainer = AutoSAMTrainer.__new__(AutoSAMTrainer)
    trainer.network, trainer.device, trainer.grad_scaler = network, torch.device("cpu"), None
    trainer.initial_lr, trainer.weight_decay, trainer.num_epochs = 5e-4, 3e-5, STEPS
    # nnU-Net's own loss for label-based training without deep supervision (nnUNetTrainer._build_loss)
    trainer.loss = DC_and_CE_loss(
        {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        ignore_label=None,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
    trainer.optimizer, _ = trainer.configure_optimizers()
    return trainer


def foreground_dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    scores = [
        2 * ((prediction == c) & (reference == c)).sum() / ((prediction == c).sum() + (reference == c).sum())
        for c in (1, 2, 3)
    ]
    return float(np.mean(scores))


@pytest.fixture
def one_thread():
    """Small kernels on one thread: on this project's shared 2-core machines two threads ran them ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_autosam_head_beats_a_constant_prediction_on_a_held_out_slice(tmp_path, one_thread):
    source = write_synthetic_acdc(tmp_path, num_patients=2, shape=(4, 128, 128))
    frames = [read_frame(source, "patient001", frame) for frame in (1, 10)]
    images = np.concatenate([image for image, _ in frames])
    labels = np.concatenate([label for _, label in frames])
    held_out_image, held_out_labels = read_frame(source, "patient002", 1)
    held_out_image, held_out_labels = held_out_image[2], held_out_labels[2]  # a mid-ventricular slice
    assert set(np.unique(held_out_labels)) == {0, 1, 2, 3}

    torch.manual_seed(0)
    np.random.seed(0)  # CachedBatches draws with numpy's global generator, as nnU-Net's loader does
    network = build_sam_network(EncoderSettings("tiny", 128), "autosam", 1, 4).train()
    with torch.no_grad():
        embeddings = network.embed(torch.from_numpy(images[:, None])).numpy().astype(np.float16)
    foreground = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))
    batches = CachedBatches(CachedSamples(["patient001"], [(embeddings, labels, foreground)]), 4, 0.33)

    encoder_calls = []
    network.encoder.register_forward_hook(lambda *args: encoder_calls.append(1))
    trainer = cached_trainer(network)
    losses = [float(trainer.train_step(next(batches))["loss"]) for _ in range(STEPS)]
    assert not encoder_calls  # a cached step runs the head alone
    assert np.mean(losses[-10:]) < np.mean(losses[:10])

    with torch.no_grad():
        logits = network.eval()(torch.from_numpy(held_out_image[None, None]))
    prediction = logits.argmax(1)[0].numpy()
    constant = np.zeros_like(held_out_labels)  # background, the majority class
    learned, baseline = foreground_dice(prediction, held_out_labels), foreground_dice(constant, held_out_labels)
    print(f"held-out mean foreground Dice: head {learned:.3f}, constant {baseline:.3f}")
    assert learned > baseline + 0.4, (learned, baseline)
