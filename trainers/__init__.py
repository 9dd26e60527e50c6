"""Thin modules for nnU-Net's nnUNet_extTrainer lookup."""
