"""`nnunet-autosam compare`: stock nnU-Net against the SAM heads on few labelled units of any dataset."""
