"""Sphinx configuration of the dpjax documentation.

Build (warnings are errors; the tests run exactly this)::

    python -m sphinx -W -b html docs docs/_build/html

Notebooks are rendered from the outputs stored in ``docs/notebooks/`` (written by
``docs/render_notebooks.py``); the build never executes them.
"""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # autodoc imports dpjax; no accelerator needed

import dpjax_pages  # noqa: E402

import dpjax  # noqa: E402

dpjax_pages.write(ROOT)  # docs/benchmark_runs.md, from benchmarks/results/

project = "dpjax"
author = "the dpjax authors"
copyright = "the dpjax authors"  # noqa: A001  (Sphinx's name)
release = version = dpjax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",  # MyST markdown pages and .ipynb notebooks
    "sphinx-mathjax-offline",  # MathJax from the build's _static (no CDN needed)
    "dpjax_api",  # docs/_ext/dpjax_api.py: the API pages and the docstring check
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "README.md", "**/.ipynb_checkpoints"]
suppress_warnings = ["myst.header"]  # the included CHANGELOG starts its headings at level 2

# -- cross-references: every reference must resolve ------------------------------------
nitpicky = True
# No intersphinx (the build runs offline): names of other libraries stay plain text.
_EXTERNAL = (
    r"(jax|jnp|jex|jax_core|lax|np|numpy|optax|flax|nn|chex|ml_collections|absl|tf|tfds|"
    r"orbax|ocp|dp_accounting|scipy|tokenizers|tiktoken|safetensors|tensorboardX|"
    r"sacrebleu|rouge_score|nltk|matplotlib|contextlib|collections|concurrent|threading|"
    r"pathlib|os|io|re|enum|dataclasses|functools|logging|random|typing|types|"
    r"typing_extensions|abc|json|numbers)"
)
nitpick_ignore_regex = [
    (r"py:.*", r"dpjax(\.\w+)*\._\w+"),  # private base classes, in signatures only
    (r"py:class", r"dpjax\.data\.offline\.RawSplit"),  # not in __all__; named by signatures
    (r"py:.*", _EXTERNAL + r"\..*"),
    (
        r"py:.*",
        r"(Array|ArrayLike|PRNGKey|PyTree|DTypeLike|Shape|Dtype|ndarray|"
        r"ConfigDict|FrozenConfigDict|Module|GradientTransformation|"
        r"GradientTransformationExtraArgs|Updates|Params|OptState|Mesh|"
        r"NamedSharding|PartitionSpec|Sharding|Device|Path|PathLike)",
    ),
]

# -- autodoc / napoleon: Google-style docstrings ---------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # not flax's Module.setup docs on every model
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# -- MyST and notebooks -----------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # render the stored outputs of docs/notebooks/*.ipynb
nb_merge_streams = True

# -- HTML -------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"dpjax {version}"
html_static_path = []
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
}
pygments_style = "default"
