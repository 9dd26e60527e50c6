"""The SimCLR baseline: NT-Xent, and pretraining through the stock CLI into a checkpoint that stock
nnUNetTrainer's -pretrained_weights loads with every encoder weight."""

import json
import math
import os
import re

import pytest
import torch
from cli_runner import run

from nnunet_autosam.training.contrastive import ProjectionHead, TwoViews, nt_xent_loss
from nnunet_autosam.training.simclr import HEAD_KEY

PATIENTS = ["patient001", "patient002", "patient003"]


# ---- unit ------------------------------------------------------------------------------------------------


def test_identical_views_score_lower_than_random_pairs():
    torch.manual_seed(0)
    z = torch.randn(16, 128)
    same = nt_xent_loss(z, z.clone())
    random_pairs = nt_xent_loss(z, torch.randn(16, 128))
    assert same.ndim == 0 and random_pairs.ndim == 0
    assert same < random_pairs
    assert same < 0.1  # temperature 0.1: positives at cosine 1 dominate every negative


def test_loss_is_symmetric_and_scale_invariant():
    torch.manual_seed(1)
    z1, z2 = torch.randn(6, 32), torch.randn(6, 32)
    assert torch.allclose(nt_xent_loss(z1, z2), nt_xent_loss(z2, z1))
    assert torch.allclose(nt_xent_loss(z1, z2), nt_xent_loss(3 * z1, 0.5 * z2), atol=1e-6)


def test_random_pairs_near_chance_and_shapes_checked():
    torch.manual_seed(2)
    n = 64
    loss = nt_xent_loss(torch.randn(n, 128), torch.randn(n, 128), temperature=1.0)
    assert abs(loss.item() - torch.log(torch.tensor(2 * n - 1.0)).item()) < 0.2
    with pytest.raises(ValueError):
        nt_xent_loss(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(ValueError):
        nt_xent_loss(torch.randn(4, 8, 2), torch.randn(4, 8, 2))


def test_projection_head_and_two_views_shapes():
    assert ProjectionHead(32)(torch.randn(3, 32, 5, 4)).shape == (3, 128)

    def shift(image, segmentation):
        return {"image": image + torch.randn(()), "segmentation": segmentation}

    image = torch.randn(1, 8, 8)
    labels = torch.tensor([-1, 0, 1, 3], dtype=torch.int16).repeat(1, 8, 2)
    out = TwoViews(shift)(image=image, segmentation=labels)
    assert out["image"].shape == (2, 8, 8)
    assert not torch.equal(out["image"][0], out["image"][1])
    # labels are blanked to background; only the -1 outside-the-mask marker survives
    assert set(out["segmentation"].unique().tolist()) == {-1, 0}


# ---- end to end through the stock CLI -----------------------------------------------------------------


def shrink_2d_plans(plans_file):
    """A 4-stage, 64x64, batch-8 network, so that CPU training takes seconds per epoch."""
    plans = json.loads(plans_file.read_text())
    configuration = plans["configurations"]["2d"]
    configuration["batch_size"] = 8
    configuration["patch_size"] = [64, 64]
    configuration["architecture"]["arch_kwargs"].update(
        n_stages=4,
        features_per_stage=[16, 32, 64, 128],
        kernel_sizes=[[3, 3]] * 4,
        strides=[[1, 1], [2, 2], [2, 2], [2, 2]],
        n_conv_per_stage=[2] * 4,
        n_conv_per_stage_decoder=[2] * 3,
    )
    plans_file.write_text(json.dumps(plans, indent=1))


@pytest.mark.slow
def test_pretrain_with_stock_cli_then_load_into_stock_trainer(acdc_dir, nnunet_env, capsys):
    from nnunet_autosam.data.conversion import convert_acdc

    convert_acdc(acdc_dir, 27, patients=PATIENTS)
    env = dict(os.environ, nnUNet_def_n_proc="1", nnUNet_compile="f")
    env.pop("nnUNet_n_proc_DA", None)  # 0 breaks the planner (torch.set_num_threads(0))
    run(["nnUNetv2_plan_and_preprocess", "-d", "27", "-c", "2d", "-np", "1"], env, timeout=600)
    shrink_2d_plans(nnunet_env["nnUNet_preprocessed"] / "Dataset027_ACDC" / "nnUNetPlans.json")

    trainer_dir = run(["nnunet-autosam", "trainer-dir"], env, timeout=600).stdout.strip()
    env.update(
        nnUNet_extTrainer=trainer_dir,
        nnUNet_n_proc_DA="0",
        AUTOSAM_NUM_EPOCHS="3",
        AUTOSAM_ITERS_PER_EPOCH="10",
        AUTOSAM_VAL_ITERS_PER_EPOCH="2",
    )
    run(["nnUNetv2_train", "27", "2d", "all", "-tr", "nnUNetTrainerSimCLR", "-device", "cpu"], env, timeout=600)

    output = nnunet_env["nnUNet_results"] / "Dataset027_ACDC" / "nnUNetTrainerSimCLR__nnUNetPlans__2d"
    fold = output / "fold_all"
    checkpoint_file = fold / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)

    # the loss falls, and the run logged exactly the planned epochs
    losses = [float(x) for x in checkpoint["logging"]["train_losses"]]
    val_losses = [float(x) for x in checkpoint["logging"]["val_losses"]]
    assert len(losses) == 3 and len(val_losses) == 3 and all(map(math.isfinite, losses + val_losses))
    assert losses[0] > losses[-1]
    log_text = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert len(re.findall(r"train_loss \d", log_text)) == 3
    assert "final validation skipped" in log_text
    assert not (fold / "validation").exists() and not (fold / "checkpoint_best.pth").exists()
    assert (fold / "progress.png").is_file()
    assert "fold all trains on all 6 cases" in log_text

    # the projection head is kept apart from network_weights, which holds the full network
    weights = checkpoint["network_weights"]
    assert HEAD_KEY in checkpoint and checkpoint["trainer_name"] == "nnUNetTrainerSimCLR"
    assert not any("projection" in key or "mlp" in key for key in weights)
    assert any(key.startswith("decoder.") for key in weights)

    # stock nnUNetTrainer's network, built from the plans, loads it through nnU-Net's own function
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(str(output / "plans.json"))
    configuration = plans_manager.get_configuration("2d")
    dataset_json = json.loads((output / "dataset.json").read_text())
    network = nnUNetTrainer.build_network_architecture(
        plans_manager,
        configuration,
        determine_num_input_channels(plans_manager, configuration, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        True,
    )
    encoder_keys = [key for key in network.state_dict() if key.startswith("encoder.")]
    assert encoder_keys
    fresh = {key: value.clone() for key, value in network.state_dict().items()}

    capsys.readouterr()
    load_pretrained_weights(network, str(checkpoint_file), verbose=True)
    printed = capsys.readouterr().out
    listed = re.findall(r"^(\S+) shape torch\.Size", printed, flags=re.MULTILINE)
    matched_encoder = [key for key in listed if key.startswith("encoder.")]
    print(
        f"train losses {losses}, val losses {val_losses}; "
        f"load_pretrained_weights matched {len(listed)} keys, {len(matched_encoder)} of "
        f"{len(encoder_keys)} encoder keys"
    )
    assert sorted(matched_encoder) == sorted(encoder_keys)
    # everything but the segmentation layers (which nnU-Net never transfers) came from the checkpoint
    assert sorted(listed) == sorted(key for key in network.state_dict() if ".seg_layers." not in key)

    loaded = network.state_dict()
    for key in encoder_keys:
        assert torch.equal(loaded[key], weights[key]), key
    # pretraining changed the encoder (it is not a fresh initialisation that happens to match)
    assert any(not torch.equal(fresh[key], weights[key]) for key in encoder_keys)

    # and the stock CLI fine-tunes from it: nnU-Net's own -pretrained_weights, our name for the results folder
    finetune = run(
        [
            "nnUNetv2_train",
            "27",
            "2d",
            "0",
            "-tr",
            "nnUNetTrainerSimCLRFinetune",
            "-device",
            "cpu",
            "-pretrained_weights",
            str(checkpoint_file),
        ],
        dict(env, AUTOSAM_NUM_EPOCHS="1"),
        timeout=600,
    ).stdout
    loaded_by_cli = re.findall(r"^(encoder\.\S+) shape torch\.Size", finetune, flags=re.MULTILINE)
    print(f"nnUNetv2_train -pretrained_weights loaded {len(loaded_by_cli)} of {len(encoder_keys)} encoder keys")
    assert sorted(loaded_by_cli) == sorted(encoder_keys)
    finetuned = nnunet_env["nnUNet_results"] / "Dataset027_ACDC" / "nnUNetTrainerSimCLRFinetune__nnUNetPlans__2d"
    assert (finetuned / "fold_0" / "checkpoint_final.pth").is_file()
