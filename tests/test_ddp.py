"""The SAM network under DistributedDataParallel, as nnU-Net's ``-num_gpus`` path runs it.

Why: with ``-num_gpus N`` nnU-Net builds our network, calls the trainer's ``configure_optimizers``,
then wraps ``self.network`` in ``SyncBatchNorm.convert_sync_batchnorm`` and ``DDP(...)``. Two things
must hold there. A frozen encoder's weights stay out of DDP's gradient buckets: they get no
gradient, and bucketed they would either be all-reduced for nothing or stall DDP's reducer, which
waits for every bucketed gradient. And the replicas stay in step: each one holds, after every step,
what one process would train on the combined batch.

Here: 2 CPU processes on gloo (DDP without device_ids), the random ``tiny`` encoder at 64x64, each head
on a frozen encoder and AutoSAM with the encoder trained (ft-all), 3 AdamW steps from the trainer's
``configure_optimizers`` with nnU-Net's gradient clipping, and a cross-entropy that is a mean over
samples (nnU-Net's batch Dice is not, so two halves would not add up to the whole batch).
"""

import json
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

pytestmark = pytest.mark.slow  # two processes under DistributedDataParallel per case

WORLD_SIZE = 2
PER_RANK = 2  # samples per process; the single-process reference gets all WORLD_SIZE * PER_RANK
INPUT = 64  # the smallest input the tiny encoder allows (a multiple of its 16-pixel patch, at least 64)
NUM_CLASSES = 3
STEPS = 3
SEED = 1234  # the heads take their random start from torch's global generator (the encoder seeds itself)

CASES = {  # test id: (head, train_encoder, trainer class name)
    "autosam-frozen": ("autosam", False, "AutoSAMTrainer"),
    "cnn-frozen": ("cnn", False, "SAMCNNTrainer"),
    "linear-frozen": ("linear", False, "SAMLinearTrainer"),
    "autosam-ft-all": ("autosam", True, "AutoSAMFullFTTrainer"),
}


def combined_batch():
    """The fixed batch all runs share: (images, labels) for WORLD_SIZE * PER_RANK samples."""
    generator = torch.Generator().manual_seed(7)
    images = torch.randn(WORLD_SIZE * PER_RANK, 1, INPUT, INPUT, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (WORLD_SIZE * PER_RANK, INPUT, INPUT), generator=generator)
    return images, labels


def build(case):
    """The network and its optimizer, made by the trainer's own configure_optimizers (as nnU-Net's initialize)."""
    from nnunet_autosam.experiment_planning.settings import EncoderSettings
    from nnunet_autosam.model.network import build_sam_network
    from nnunet_autosam.training import trainers

    head, train_encoder, trainer_name = CASES[case]
    torch.manual_seed(SEED)
    network = build_sam_network(
        EncoderSettings("tiny", INPUT, None), head, 1, NUM_CLASSES, train_encoder=train_encoder
    ).train()
    trainer_class = getattr(trainers, trainer_name)
    trainer = trainer_class.__new__(trainer_class)  # nnU-Net's __init__ needs a dataset on disk
    trainer.network, trainer.initial_lr, trainer.weight_decay, trainer.num_epochs = network, 5e-4, 3e-5, 10
    optimizer, _ = trainer.configure_optimizers()
    return network, optimizer


def train(model, network, optimizer, images, labels):
    """STEPS of nnU-Net's train_step (fp32 path): zero_grad, forward, backward, clip to norm 12, step.

    Returns the first step's gradients (after DDP's all-reduce, before clipping), by ``network``'s names.
    """
    first = None
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)  # a mean over samples (and pixels)
        loss.backward()
        if first is None:
            first = {n: p.grad.clone() for n, p in network.named_parameters() if p.grad is not None}
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12)
        optimizer.step()
    return first


def named_state(network):
    """The tensors of the state dict (not the encoder identity in _extra_state), detached copies."""
    return {k: v.detach().clone() for k, v in network.state_dict().items() if isinstance(v, torch.Tensor)}


def ddp_worker(rank, case, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=120)
    )
    try:
        network, optimizer = build(case)
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
        model = DDP(network)  # CPU: no device_ids; find_unused_parameters left False, as nnU-Net does
        images, labels = combined_batch()
        part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        gradients = train(model, network, optimizer, images[part], labels[part])

        names = {p.data_ptr(): n for n, p in model.module.named_parameters()}
        # The reducer's buckets: the parameters whose gradients DDP all-reduces (rebuilt in use order
        # after the first step). GradBucket.parameters() hands back the module's own tensors.
        bucketed = [
            names[p.data_ptr()] for bucket in model.reducer._get_zeros_like_grad_buckets() for p in bucket.parameters()
        ]
        report = {
            "bucketed": bucketed,
            "trainable": [n for n, p in model.module.named_parameters() if p.requires_grad],
            "without_grad": [n for n, p in model.module.named_parameters() if p.requires_grad and p.grad is None],
            "sync_batchnorm": any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()),
        }
        torch.save({"state": named_state(network), "gradients": gradients}, os.path.join(out_dir, f"rank{rank}.pt"))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as file:
            json.dump(report, file)
    finally:
        dist.destroy_process_group()


def mismatches(a, b, atol, rtol):
    """'key: max |difference|' for each tensor of ``a`` not close to ``b`` (or missing there)."""
    bad = []
    for key, value in a.items():
        if key not in b or b[key].shape != value.shape:
            bad.append(f"{key}: missing or other shape")
        elif not torch.allclose(value, b[key], atol=atol, rtol=rtol):
            bad.append(f"{key}: max |diff| {(value - b[key]).abs().max().item():.3g}")
    return bad


@pytest.mark.parametrize("case", list(CASES))
def test_ddp_replicas_match_one_process_on_the_whole_batch_and_frozen_weights_stay_out(case, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSAM_CPU_BF16", "0")  # plain fp32 on CPU, in this process and the children
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for variable in ("AUTOSAM_EMBEDDING_MEMO", "AUTOSAM_EMBEDDING_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    mp.spawn(ddp_worker, args=(case, str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    saved = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    states = [s["state"] for s in saved]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]

    # The one-process reference on the combined batch, from the same seed, with the same optimizer, on one
    # thread like the replicas: AdamW's first steps divide each gradient by its own size, which magnifies
    # the rounding of near-zero gradients, and other thread counts round otherwise (here up to 2e-5 apart).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        network, optimizer = build(case)
        initial = named_state(network)
        reference_gradients = train(network, network, optimizer, *combined_batch())
        reference = named_state(network)
    finally:
        torch.set_num_threads(threads)

    _, train_encoder, _ = CASES[case]
    parameters = dict(network.named_parameters())
    encoder = [n for n in parameters if n.startswith("encoder.")]
    head = [n for n in parameters if n.startswith("head.")]
    assert encoder and head, f"{case}: expected encoder and head parameters in the state dict"

    # What DDP synchronises: the reducer's buckets hold exactly the trained parameters.
    for rank, report in enumerate(reports):
        bucketed_encoder = [n for n in report["bucketed"] if n.startswith("encoder.")]
        if train_encoder:
            assert sorted(bucketed_encoder) == sorted(encoder), (
                f"{case}: rank {rank}: a trained encoder must be all-reduced, but DDP's buckets miss "
                f"{sorted(set(encoder) - set(bucketed_encoder))[:5]}"
            )
        else:
            assert not bucketed_encoder, (
                f"{case}: rank {rank}: frozen encoder parameters are in DDP's buckets: {bucketed_encoder[:5]}"
            )
        assert set(head) <= set(report["bucketed"]), (
            f"{case}: rank {rank}: head parameters missing from DDP's buckets: "
            f"{sorted(set(head) - set(report['bucketed']))[:5]}"
        )
        assert sorted(report["bucketed"]) == sorted(report["trainable"]), (
            f"{case}: rank {rank}: DDP's buckets are not exactly the trainable parameters; only bucketed: "
            f"{sorted(set(report['bucketed']) - set(report['trainable']))[:5]}, trainable but not bucketed: "
            f"{sorted(set(report['trainable']) - set(report['bucketed']))[:5]}"
        )
        assert not report["without_grad"], (
            f"{case}: rank {rank}: trainable parameters unused in forward (DDP would need "
            f"find_unused_parameters): {report['without_grad'][:5]}"
        )
        assert not report["sync_batchnorm"], f"{case}: rank {rank} has SyncBatchNorm layers, which fail on CPU"

    # The replicas stay in step: each one holds the same weights after training.
    apart = mismatches(states[0], states[1], atol=0, rtol=0)  # bit-identical: the same all-reduced gradients
    assert not apart, f"{case}: the two DDP replicas' weights differ after {STEPS} steps: {apart[:5]}"
    assert states[0].keys() == reference.keys(), f"{case}: the DDP and reference state dicts have other keys"

    # Training moved the weights that train well beyond the tolerance below (else that comparison says
    # little), and left the frozen ones bit-identical.
    def largest_change(keys):
        return max((reference[k] - initial[k]).abs().max().item() for k in keys)

    head_change = largest_change(head)  # AdamW moves a weight by up to about lr (5e-4) a step
    assert head_change > 1e-4, f"{case}: the head hardly moved in {STEPS} steps (at most {head_change:.3g})"
    if train_encoder:
        encoder_change = largest_change(encoder)  # at a tenth of the head's rate
        assert encoder_change > 5e-5, f"{case}: the trained encoder hardly moved (at most {encoder_change:.3g})"
    else:
        changed = [k for k in encoder if not torch.equal(states[0][k], initial[k])]
        assert not changed, f"{case}: frozen encoder parameters changed under DDP: {changed[:5]}"

    # DDP's first all-reduce gives each replica the whole batch's gradient: the mean of the halves' gradients,
    # not their sum (AdamW's update hardly changes when every gradient is scaled, so the weights alone would
    # not tell), and not one half's own.
    scale = max(g.abs().max().item() for g in reference_gradients.values())
    for rank, saved_rank in enumerate(saved):
        gradients = saved_rank["gradients"]
        assert gradients.keys() == reference_gradients.keys(), (
            f"{case}: rank {rank}: other parameters got gradients than in one process: "
            f"{sorted(gradients.keys() ^ reference_gradients.keys())[:5]}"
        )
        off = mismatches(gradients, reference_gradients, atol=1e-5 * scale, rtol=1e-4)
        assert not off, (
            f"{case}: rank {rank}'s first-step gradients after DDP's all-reduce differ from the "
            f"whole batch's gradients in one process (not averaged over the replicas?): {off[:5]}"
        )

    # Each replica equals one process trained on the combined batch for all the steps. A tenth of the
    # learning rate: rounding moves weights by ~2e-6 here, unaveraged gradients by ~lr (AdamW's update
    # is about lr times the gradient's sign at first, and a half's signs often differ from the whole's).
    for rank, state in enumerate(states):
        off = mismatches(state, reference, atol=5e-5, rtol=1e-4)
        assert not off, (
            f"{case}: rank {rank}'s weights after {STEPS} DDP steps on its half of the batch differ "
            f"from one process trained on the whole batch (gradients not averaged?): {off[:5]}"
        )
