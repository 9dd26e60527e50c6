"""Prompt-free heads on SAM's image embedding. Each returns one logit map per class at 4x the token grid."""
