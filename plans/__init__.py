"""Plans presets, one per encoder type (input size and batch size), read by `nnunet-autosam plans`."""
