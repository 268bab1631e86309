"""dpjax: differentially private fine-tuning of foundation models in JAX/Flax."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "chex==0.1.92",
    "dp-accounting==0.6.0",
    "absl-py==2.5.1",
    "tensorflow-datasets==4.9.10",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "ml-collections==1.1.0",
    "orbax-checkpoint==0.12.8",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "tiktoken==0.14.0",
    "gguf==0.19.0",
    "tqdm==4.70.1",
    "tensorboardX==2.6.5",
]

GENERATION_REQUIRES = [
    "sacrebleu==2.6.0",
    "rouge-score==0.1.2",
    "nltk==3.10.4",
]

PLOT_REQUIRES = ["matplotlib==3.11.2"]

NOTEBOOK_REQUIRES = [
    "nbclient==0.11.0",
    "nbformat==5.11.1",
    "ipykernel==7.4.0",
    "jupytext==1.19.6",
]

DOCS_REQUIRES = [
    "sphinx==9.0.4",
    "sphinx-book-theme==1.4.0",
    "myst-parser==5.2.0",
    "myst-nb==1.4.0",
    "sphinx-mathjax-offline==0.0.2",
]

TEST_REQUIRES = (
    GENERATION_REQUIRES
    + PLOT_REQUIRES
    + NOTEBOOK_REQUIRES
    + [
        "pytest==9.0.3",
        "pytest-xdist==3.8.0",
        "hypothesis==6.155.2",
        "ruff==0.17.6",
    ]
)

setup(
    name="dpjax",
    version="0.1.0",
    description="Differentially private fine-tuning (DP-BiTFiT, DP full, ghost) in JAX/Flax.",
    packages=find_packages(include=["dpjax", "dpjax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "generation": GENERATION_REQUIRES,
        "notebooks": NOTEBOOK_REQUIRES + PLOT_REQUIRES,
        "docs": DOCS_REQUIRES,
        "plot": PLOT_REQUIRES,
        "test": TEST_REQUIRES,
    },
)
