"""Segment Anything (SAM) image encoders with prompt-free heads, trained and applied as nnU-Net v2 trainers."""

__version__ = "0.1.0"
