"""CPU bf16 autocast (nnunet_autosam.utilities.precision): where it applies, that 0 is the fp32 path exactly, and that
fp32 and bf16 embeddings never share a cache folder or a memo entry.

bf16 is forced with AUTOSAM_CPU_BF16=1 (and, for the frozen encoder, AUTOSAM_CPU_BF16_ENCODER=1) so that
these tests mean the same on a CPU without bf16 units (autocast then runs, only slower). Training and
prediction through the stock CLI at the default (auto) are in test_end_to_end.py.
"""

import json

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from sam_files import write_sam_checkpoint

from nnunet_autosam.experiment_planning.settings import CacheMode, EncoderSettings
from nnunet_autosam.model.embedding_memo import MEMO_ENV, EmbeddingMemo
from nnunet_autosam.model.network import build_sam_network
from nnunet_autosam.training.embedding_cache.storage import cache_key, cache_key_fields
from nnunet_autosam.utilities import precision
from nnunet_autosam.utilities.errors import InputError

CPU = torch.device("cpu")
TINY = EncoderSettings("tiny", 128)
UNET_2D = {
    "n_stages": 3,
    "features_per_stage": [8, 16, 32],
    "conv_op": "torch.nn.modules.conv.Conv2d",
    "kernel_sizes": [[3, 3]] * 3,
    "strides": [[1, 1], [2, 2], [2, 2]],
    "n_conv_per_stage": [2] * 3,
    "n_conv_per_stage_decoder": [2] * 2,
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}


def dtypes_of(module: torch.nn.Module, kind) -> list:
    """Record the output dtype of every submodule of type ``kind`` during the next forward passes."""
    seen = []
    for child in module.modules():
        if isinstance(child, kind):
            child.register_forward_hook(lambda m, args, output: seen.append(output.dtype))
    return seen


@pytest.mark.parametrize("value, expected", [("0", False), ("off", False), ("1", True), ("on", True)])
def test_the_variable_forces_cpu_bf16_on_or_off(monkeypatch, value, expected):
    monkeypatch.setenv(precision.CPU_BF16_ENV, value)
    monkeypatch.delenv(precision.FROZEN_ENCODER_BF16_ENV, raising=False)
    assert precision.cpu_bf16_enabled() is expected
    assert precision.encoder_dtype(CPU, trained=True) == (torch.bfloat16 if expected else None)
    assert precision.encoder_dtype(CPU) is None  # a frozen encoder stays fp32 by default
    assert precision.embedding_precision(CPU) == "fp32"
    monkeypatch.setenv(precision.FROZEN_ENCODER_BF16_ENV, "1")
    assert precision.encoder_dtype(CPU) == (torch.bfloat16 if expected else None)
    assert precision.embedding_precision(CPU) == ("bf16" if expected else "fp32")


def test_a_bad_frozen_encoder_setting_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    monkeypatch.setenv(precision.FROZEN_ENCODER_BF16_ENV, "yes please")
    with pytest.raises(InputError, match="AUTOSAM_CPU_BF16_ENCODER='yes please' is not a setting: use 0") as error:
        precision.encoder_dtype(CPU)
    assert "\n" not in str(error.value)


def test_auto_follows_the_cpu_and_a_bad_value_is_refused_in_one_line(monkeypatch):
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    assert precision.cpu_bf16_enabled() is precision.cpu_bf16_pays()
    monkeypatch.setenv(precision.CPU_BF16_ENV, "fast")
    with pytest.raises(InputError, match="AUTOSAM_CPU_BF16='fast' is not a setting: use auto, 1") as error:
        precision.cpu_bf16_enabled()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "units, speedup, expected", [(True, 1.65, True), (True, 0.83, False), (True, 1.05, False), (False, 2.0, False)]
)
def test_auto_takes_bf16_only_where_the_probe_finds_it_faster(monkeypatch, units, speedup, expected):
    """bf16 instructions that run slower than fp32 (a Xeon whose AMX is hidden: 0.83x) leave auto in fp32."""
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: units)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: speedup)
    assert precision.cpu_bf16_enabled() is expected
    line = precision.describe(CPU)
    assert line.endswith(
        "bf16 autocast, AutoSAM's head in fp32; a frozen encoder in fp32 (AUTOSAM_CPU_BF16_ENCODER=1 for bf16)"
        if expected
        else ": fp32"
    )
    assert (f"at {speedup:.2f}x fp32's speed" in line) is units
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    assert precision.cpu_bf16_enabled()


def test_the_probe_runs_inside_a_prediction_and_leaves_the_random_state_alone(monkeypatch, tmp_path):
    monkeypatch.setenv(precision.PROBE_FILE_ENV, str(tmp_path / "probe.json"))
    precision.cpu_bf16_speedup.cache_clear()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with torch.inference_mode():
        speedup = precision.cpu_bf16_speedup()
    assert 0.05 < speedup < 50
    assert torch.equal(torch.rand(3), expected)
    precision.cpu_bf16_speedup.cache_clear()


def test_the_probe_is_timed_once_per_machine_and_read_by_every_later_process(monkeypatch, tmp_path):
    """Timed anew in each process, the ratio followed the load and flipped auto between trainings of one run."""
    probe = tmp_path / "cache" / "probe.json"
    monkeypatch.setenv(precision.PROBE_FILE_ENV, str(probe))
    timings = iter([1.8, 0.7, 0.9])
    monkeypatch.setattr(precision, "timed_bf16_speedup", lambda: next(timings))

    def new_process() -> float:
        precision.cpu_bf16_speedup.cache_clear()  # what a new process starts with
        return precision.cpu_bf16_speedup()

    try:
        assert new_process() == 1.8
        assert new_process() == 1.8  # read, not timed again at 0.7
        probe.write_text("{half-writ")  # a damaged file is timed again
        assert new_process() == 0.7
        monkeypatch.setattr(precision, "probe_key", lambda: "another machine")
        assert new_process() == 0.9
        assert sorted(json.loads(probe.read_text()).values()) == [0.7, 0.9]
    finally:
        precision.cpu_bf16_speedup.cache_clear()


def test_the_probe_times_its_own_where_its_file_cannot_be_written(monkeypatch, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv(precision.PROBE_FILE_ENV, str(blocker / "probe.json"))
    monkeypatch.setattr(precision, "timed_bf16_speedup", lambda: 1.3)
    precision.cpu_bf16_speedup.cache_clear()
    try:
        assert precision.cpu_bf16_speedup() == 1.3
    finally:
        precision.cpu_bf16_speedup.cache_clear()


def test_off_is_the_fp32_path_exactly(monkeypatch):
    """0: the encoder, the head and the logits are what the modules compute without any autocast."""
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    torch.manual_seed(0)
    network = build_sam_network(TINY, "autosam", 1, 4).eval()
    x = torch.randn(2, 1, 64, 48)
    with torch.no_grad():
        embedding = network.encoder(network.input_mapping(x))
        expected = torch.nn.functional.interpolate(
            network.head(embedding), size=(64, 48), mode="bilinear", align_corners=False
        )
        logits = network(x)
    assert torch.equal(network.encode(x), embedding)
    assert logits.dtype == torch.float32 and torch.equal(logits, expected)


@pytest.mark.parametrize("head", ["cnn", "linear"])
def test_on_runs_encoder_and_head_in_bf16_and_returns_fp32_logits(monkeypatch, head):
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    monkeypatch.setenv(precision.FROZEN_ENCODER_BF16_ENV, "1")
    torch.manual_seed(0)
    network = build_sam_network(TINY, head, 1, 3)
    linears = dtypes_of(network.encoder, torch.nn.Linear)
    convolutions = dtypes_of(network.head, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))
    x = torch.randn(2, 1, 64, 48)
    logits = network(x)
    assert linears and set(linears) == {torch.bfloat16}
    assert convolutions and set(convolutions) == {torch.bfloat16}
    assert logits.dtype == torch.float32 and network.encode(x).dtype == torch.float32
    logits.square().mean().backward()  # the head trains in bf16; its weights and gradients stay fp32
    grads = [p.grad for p in network.head.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    with torch.no_grad():
        fp32 = network.eval()(x)
        bf16_again = None
        monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
        bf16_again = network(x)
    assert not torch.equal(fp32, bf16_again)
    assert (fp32 - bf16_again).abs().max() <= 0.1 * fp32.abs().max()  # bf16 rounding, not another function


def test_by_default_a_frozen_encoder_stays_fp32_while_the_head_and_a_trained_encoder_run_bf16(monkeypatch):
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    monkeypatch.delenv(precision.FROZEN_ENCODER_BF16_ENV, raising=False)
    torch.manual_seed(0)
    frozen = build_sam_network(TINY, "linear", 1, 3)
    frozen_linears = dtypes_of(frozen.encoder, torch.nn.Linear)
    head_convolutions = dtypes_of(frozen.head, torch.nn.Conv2d)
    frozen(torch.randn(2, 1, 64, 48))
    assert frozen_linears and set(frozen_linears) == {torch.float32}
    assert head_convolutions and set(head_convolutions) == {torch.bfloat16}
    trained = build_sam_network(TINY, "linear", 1, 3, train_encoder=True)
    trained_linears = dtypes_of(trained.encoder, torch.nn.Linear)
    trained(torch.randn(2, 1, 64, 48))
    assert trained_linears and set(trained_linears) == {torch.bfloat16}


@pytest.mark.parametrize("train_encoder", [False, True])
def test_autosam_head_stays_fp32_on_a_bf16_cpu_also_inside_a_training_autocast(monkeypatch, train_encoder):
    """AutoSAM's head is exempt from CPU bf16 (AutoSAMHead.cpu_bf16 says why), also where the trainer's cached
    step autocasts around it and where ft-all trains the encoder in bf16; the same weights give fp32's logits."""
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    torch.manual_seed(0)
    network = build_sam_network(TINY, "autosam", 1, 4, train_encoder=train_encoder)
    head_layers = dtypes_of(network.head, (torch.nn.Linear, torch.nn.ConvTranspose2d))
    encoder_linears = dtypes_of(network.encoder, torch.nn.Linear)
    x = torch.randn(2, 1, 64, 48)
    embedding = network.encode(x).detach()
    with precision.training_autocast(CPU):
        logits = network.segment(embedding, x.shape[-2:])
    network(x)
    assert head_layers and set(head_layers) == {torch.float32}
    assert set(encoder_linears) == {torch.bfloat16 if train_encoder else torch.float32}
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    assert torch.equal(logits, network.segment(embedding, x.shape[-2:]))


def test_the_nnunet_network_wrapper_autocasts_on_cpu_only_and_keeps_stock_weights(monkeypatch):
    from nnunet_autosam.training.trainer_base import nnUNetTrainerEnvSchedule

    def unet():
        torch.manual_seed(0)
        return get_network_from_plans(
            "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            UNET_2D,
            ["conv_op", "norm_op", "dropout_op", "nonlin"],
            1,
            3,
            allow_init=True,
            deep_supervision=True,
        )

    stock, wrapped = unet(), precision.autocast_forward_on_cpu(unet())
    assert list(stock.state_dict()) == list(wrapped.state_dict())
    x = torch.randn(2, 1, 32, 32)
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    assert all(torch.equal(a, b) for a, b in zip(stock(x), wrapped(x)))  # off: the stock forward exactly
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    convolutions = dtypes_of(wrapped, torch.nn.Conv2d)
    outputs = wrapped(x)
    assert set(convolutions) == {torch.bfloat16}
    assert isinstance(outputs, list) and all(o.dtype == torch.float32 for o in outputs)  # deep supervision
    assert all((a - b).abs().max() <= 0.1 * a.abs().max() for a, b in zip(stock(x), outputs))
    sum(o.square().mean() for o in outputs).backward()
    assert all(p.grad.dtype == torch.float32 for p in wrapped.parameters())
    # the trainer variant builds its network through the wrapper; stock nnUNetTrainer is left alone
    assert "build_network_architecture" in vars(nnUNetTrainerEnvSchedule)


def test_fp32_and_bf16_embeddings_never_share_a_cache_folder_or_memo_entry(tmp_path, monkeypatch):
    tiny_file = write_sam_checkpoint(tmp_path / "sam_tiny.pth", "tiny")
    monkeypatch.setenv(MEMO_ENV, str(tmp_path / "memo"))
    monkeypatch.setenv(precision.FROZEN_ENCODER_BF16_ENV, "1")
    network = build_sam_network(EncoderSettings("tiny", 128, str(tiny_file)), "linear", 1, 2).eval()
    keys = {
        name: cache_key(cache_key_fields(network.identity, "nnUNetPlans_2d", (64, 64), CacheMode("cache"), name))
        for name in ("fp32", "bf16")
    }
    assert keys["fp32"] != keys["bf16"]
    tile = torch.randn(1, 1, 64, 64)
    memo = EmbeddingMemo(tmp_path / "memo", network.identity)
    memo_keys, embeddings = {}, {}
    for value, name in (("0", "fp32"), ("1", "bf16")):
        monkeypatch.setenv(precision.CPU_BF16_ENV, value)
        memo_keys[name] = memo.key(tile)
        with torch.no_grad():
            embeddings[name] = network.embed(tile)  # through the network's own memo
    assert memo_keys["fp32"] != memo_keys["bf16"]
    assert len(list((tmp_path / "memo").rglob("*.npy"))) == 2
    assert not torch.equal(embeddings["fp32"], embeddings["bf16"])
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    with torch.no_grad():
        assert torch.equal(network.embed(tile), network.encode(tile))  # the fp32 entry, not the bf16 one
