"""The assembled network: one pass for all classes, the input mapping, the frozen encoder, lean state dicts."""

import pytest
import torch
from sam_files import write_sam_checkpoint

from nnunet_autosam.experiment_planning.settings import EncoderSettings
from nnunet_autosam.model.encoders import sam_vit
from nnunet_autosam.model.network import build_sam_network
from nnunet_autosam.training.trainer_base import schedule_from_environment
from nnunet_autosam.training.trainers import AutoSAMFullFTTrainer, AutoSAMTrainer, SAMCNNTrainer, SAMLinearTrainer
from nnunet_autosam.utilities.errors import InputError

TINY = EncoderSettings("tiny", 128)


@pytest.mark.parametrize("head", ["autosam", "cnn", "linear"])
@pytest.mark.parametrize("num_classes", [2, 4, 7])
def test_each_head_gives_one_logit_map_per_class_at_patch_size(head, num_classes):
    network = build_sam_network(TINY, head, 1, num_classes)
    logits = network(torch.randn(2, 1, 96, 80))
    assert logits.shape == (2, num_classes, 96, 80)


def test_autosam_runs_the_transformer_once_for_all_classes():
    network = build_sam_network(TINY, "autosam", 1, 4)
    calls = []
    network.head.transformer.register_forward_hook(lambda module, args, output: calls.append(output[0].shape))
    network(torch.randn(3, 1, 64, 64))
    assert calls == [torch.Size([3, 4, 256])]  # one pass: batch 3, one token per class


def test_autosam_gives_each_class_its_own_token():
    """With every class's hypernetwork MLP made equal, only the class tokens can tell the classes apart."""
    torch.manual_seed(0)
    head = build_sam_network(TINY, "autosam", 1, 4).head
    for mlp in head.output_hypernetworks_mlps[1:]:
        mlp.load_state_dict(head.output_hypernetworks_mlps[0].state_dict())
    logits = head(torch.randn(2, 256, 8, 8))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(logits[:, i], logits[:, j], atol=1e-4), (i, j)
    logits.square().sum().backward()
    assert all(row.abs().max() > 0 for row in head.class_tokens.weight.grad)  # every token is trained


def test_input_mapping_shows_sam_a_grey_picture_with_its_pixel_statistics():
    mapping = sam_vit.ZScoreToSAMInput(64)
    z = torch.tensor([-10.0, -3.0, 0.0, 3.0]).view(1, 1, 1, 4).expand(1, 1, 64, 4).reshape(1, 1, 16, 16)
    mapped = mapping(z)
    assert mapped.shape == (1, 3, 64, 64)
    grey = mapped * torch.tensor(sam_vit.SAM_PIXEL_STD).view(1, 3, 1, 1) + torch.tensor(sam_vit.SAM_PIXEL_MEAN).view(
        1, 3, 1, 1
    )
    assert torch.allclose(grey.amin(), torch.tensor(0.0), atol=1e-3)  # -10 clipped to -3 -> black
    assert torch.allclose(grey.amax(), torch.tensor(255.0), atol=1e-3)  # +3 -> white
    assert torch.allclose(grey[0, 0], grey[0, 2], atol=1e-4)  # the same grey in R, G and B
    middle = mapping(torch.zeros(1, 1, 64, 64))
    assert torch.allclose(
        middle[0, :, 0, 0], (127.5 - torch.tensor(sam_vit.SAM_PIXEL_MEAN)) / torch.tensor(sam_vit.SAM_PIXEL_STD)
    )


def test_stacked_channels_fill_r_g_b_each_through_the_family_mapping():
    mapping = sam_vit.ZScoreToSAMInput(128)
    x = torch.randn(2, 3, 64, 48) * torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1)
    network = build_sam_network(EncoderSettings("tiny", 128, channels="stack"), "linear", 3, 4)
    mapped = network.input_mapping(x)
    assert mapped.shape == (2, 3, 128, 128)
    for k in range(3):  # encoder channel k is image channel k, in SAM's statistics for colour k
        assert torch.allclose(mapped[:, k], mapping(x[:, k : k + 1])[:, k], atol=1e-6)
    two = build_sam_network(EncoderSettings("tiny", 128, channels="stack"), "linear", 2, 4).input_mapping(x[:, :2])
    assert torch.allclose(two[:, 1], mapping(x[:, 1:2])[:, 1], atol=1e-6)
    assert torch.allclose(two[:, 2], (mapping(x[:, :1])[:, 2] + mapping(x[:, 1:2])[:, 2]) / 2, atol=1e-6)
    one = build_sam_network(TINY, "linear", 1, 4)
    assert torch.equal(one.input_mapping(x[:, :1]), mapping(x[:, :1]))  # one channel: grey, exactly as before


def test_separate_channels_embed_each_channel_alone_and_fuse_them_as_their_mean_at_first():
    x = torch.randn(2, 4, 64, 64)
    network = build_sam_network(EncoderSettings("tiny", 128, channels="separate"), "cnn", 4, 3).eval()
    single = build_sam_network(TINY, "cnn", 1, 3).eval()
    with torch.no_grad():
        embedding = network.embed(x)
        assert embedding.shape == (2, 4 * 256, 8, 8)
        for c in range(4):  # the same encoder weights, each channel on its own
            assert torch.allclose(embedding[:, c * 256 : (c + 1) * 256], single.embed(x[:, c : c + 1]), atol=1e-5)
        mean = embedding.reshape(2, 4, 256, 8, 8).mean(1)
        assert torch.allclose(network.fusion(embedding), mean, atol=1e-5)
        assert network(x).shape == (2, 3, 64, 64)
    fusion = set(map(id, network.fusion.parameters()))
    assert fusion and fusion <= set(map(id, network.head_parameters()))  # trained with the head
    assert not list(single.fusion.parameters())  # one channel stacked: nothing to fuse


def test_channel_strategies_are_refused_where_they_cannot_apply():
    with pytest.raises(InputError, match="at most 3 channels .* has 4: use nnunet-autosam plans --channels separate"):
        build_sam_network(EncoderSettings("tiny", 128, channels="stack"), "linear", 4, 2)
    with pytest.raises(InputError, match="written for 3 image channel.* dataset has 2: write plans for this dataset"):
        build_sam_network(EncoderSettings("tiny", 128, channels="stack", num_channels=3), "linear", 2, 2)
    with pytest.raises(InputError, match="'rgb' is not a channel strategy"):
        build_sam_network(EncoderSettings("tiny", 128, channels="rgb"), "linear", 2, 2)


def test_a_head_trained_on_one_channel_strategy_is_not_loaded_into_another():
    stacked = build_sam_network(EncoderSettings("tiny", 128, channels="stack"), "linear", 2, 2)
    separate = build_sam_network(EncoderSettings("tiny", 128, channels="separate"), "linear", 2, 2)
    assert stacked.identity["channels"] == "stack:2" and separate.identity["channels"] == "separate:2"
    state = stacked.state_dict()
    with pytest.raises(InputError, match="trained with channels 'stack:2' but the plans build 'separate:2'"):
        separate.load_state_dict(state, strict=False)


def _bare_trainer(trainer_class, network):
    """Just enough of a trainer to call its configure_optimizers (nnU-Net's __init__ needs a dataset on disk)."""
    trainer = trainer_class.__new__(trainer_class)
    trainer.network, trainer.initial_lr, trainer.weight_decay, trainer.num_epochs = network, 5e-4, 3e-5, 10
    return trainer


def test_frozen_encoder_gets_no_gradient_and_is_bit_identical_after_a_step():
    network = build_sam_network(TINY, "autosam", 1, 4).train()
    optimizer, _ = _bare_trainer(AutoSAMTrainer, network).configure_optimizers()
    encoder_before = {k: v.clone() for k, v in network.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in network.head.state_dict().items()}

    loss = torch.nn.functional.cross_entropy(network(torch.randn(2, 1, 64, 64)), torch.randint(0, 4, (2, 64, 64)))
    loss.backward()
    optimizer.step()

    assert all(p.grad is None for p in network.encoder.parameters())
    assert not network.encoder.training  # train() keeps a frozen encoder in inference mode
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in network.encoder.parameters()}
    assert all(torch.equal(v, encoder_before[k]) for k, v in network.encoder.state_dict().items())
    assert any(not torch.equal(v, head_before[k]) for k, v in network.head.state_dict().items())


def test_full_fine_tuning_trains_the_encoder_at_a_tenth_of_the_rate():
    network = build_sam_network(TINY, "autosam", 1, 4, train_encoder=True)
    optimizer, scheduler = _bare_trainer(AutoSAMFullFTTrainer, network).configure_optimizers()
    head_group, encoder_group = optimizer.param_groups
    assert encoder_group["lr"] == pytest.approx(head_group["lr"] / 10)
    scheduler.step(5)
    assert encoder_group["lr"] == pytest.approx(head_group["lr"] / 10) and head_group["lr"] < 5e-4
    loss = network(torch.randn(1, 1, 64, 64)).sum()
    loss.backward()
    assert all(p.grad is not None for p in network.encoder.parameters())


def test_lean_state_dict_leaves_out_a_frozen_file_encoder_and_checks_its_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_SAM_weights", str(tmp_path))
    write_sam_checkpoint(tmp_path / "a.pth", "tiny")
    settings = EncoderSettings("tiny", 128, "a.pth")
    trained = build_sam_network(settings, "autosam", 1, 4)
    state = trained.state_dict()
    assert not any(k.startswith("encoder.") for k in state)
    assert state["_extra_state"]["checkpoint_sha256"] == trained.identity["checkpoint_sha256"]

    rebuilt = build_sam_network(settings, "autosam", 1, 4)
    torch.nn.init.zeros_(rebuilt.head.class_tokens.weight)
    rebuilt.load_state_dict(state)  # strict, as nnU-Net loads it
    assert torch.equal(rebuilt.head.class_tokens.weight, trained.head.class_tokens.weight)

    (tmp_path / "a.pth").write_bytes((tmp_path / "a.pth").read_bytes() + b"\0")  # same name, other bytes
    with pytest.raises(InputError, match="is not the file this head was trained on"):
        build_sam_network(settings, "autosam", 1, 4).load_state_dict(state)


@pytest.mark.parametrize(
    "key, other", [("encoder_type", "vit_b"), ("input_size", 64), ("input_mapping", "some_other_mapping")]
)
def test_a_checkpoint_is_refused_by_plans_of_another_encoder_identity(key, other):
    state = build_sam_network(TINY, "linear", 1, 4).state_dict()
    state["_extra_state"] = dict(state["_extra_state"], **{key: other})
    with pytest.raises(InputError, match=f"trained with {key} {other!r} but the plans build"):
        build_sam_network(TINY, "linear", 1, 4).load_state_dict(state)


def test_a_checkpoint_trained_at_another_input_size_is_refused():
    state = build_sam_network(EncoderSettings("tiny", 64), "linear", 1, 4).state_dict()
    with pytest.raises(InputError, match="trained with input_size 64 but the plans build 128"):
        build_sam_network(TINY, "linear", 1, 4).load_state_dict(state)


def test_encoders_without_a_file_or_being_trained_are_stored():
    for network in (
        build_sam_network(TINY, "linear", 1, 4),
        build_sam_network(TINY, "linear", 1, 4, train_encoder=True),
    ):
        assert any(k.startswith("encoder.") for k in network.state_dict())


def test_trainers_pick_their_heads():
    assert [t.head for t in (AutoSAMTrainer, SAMCNNTrainer, SAMLinearTrainer, AutoSAMFullFTTrainer)] == [
        "autosam",
        "cnn",
        "linear",
        "autosam",
    ]
    assert AutoSAMFullFTTrainer.train_encoder and not AutoSAMTrainer.train_encoder


def test_3d_configuration_is_refused_before_anything_is_written():
    plans = {
        "dataset_name": "Dataset001_X",
        "plans_name": "p",
        "configurations": {
            "3d_fullres": {"patch_size": [32, 32, 32], "data_identifier": "x", "architecture": {"arch_kwargs": {}}}
        },
    }
    with pytest.raises(InputError, match="configuration '3d_fullres' is 3D.*train with configuration 2d"):
        AutoSAMTrainer(plans, "3d_fullres", 0, {}, torch.device("cpu"))


def test_short_schedules_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("AUTOSAM_NUM_EPOCHS", "3")
    monkeypatch.setenv("AUTOSAM_ITERS_PER_EPOCH", "7")
    assert schedule_from_environment() == {"num_epochs": 3, "num_iterations_per_epoch": 7}
    monkeypatch.setenv("AUTOSAM_VAL_ITERS_PER_EPOCH", "zero")
    with pytest.raises(InputError, match="AUTOSAM_VAL_ITERS_PER_EPOCH='zero' is not a positive whole number"):
        schedule_from_environment()


def test_cache_and_memo_keys_change_with_the_channel_strategy(tmp_path):
    from nnunet_autosam.experiment_planning.settings import CacheMode
    from nnunet_autosam.model.embedding_memo import EmbeddingMemo
    from nnunet_autosam.training.embedding_cache.storage import cache_key, cache_key_fields

    identities = [
        build_sam_network(EncoderSettings("tiny", 128, channels=strategy), "linear", channels, 2).identity
        for strategy, channels in (("stack", 2), ("separate", 2), ("stack", 3))
    ]
    cache_keys = {cache_key(cache_key_fields(i, "2d", (64, 64), CacheMode("cache"), "fp32")) for i in identities}
    tile = torch.zeros(1, 2, 64, 64)
    memo_keys = {EmbeddingMemo(tmp_path, i).key(tile) for i in identities}
    assert len(cache_keys) == len(memo_keys) == 3
