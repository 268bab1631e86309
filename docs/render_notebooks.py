"""Executes the notebooks in ``colabs/`` and stores them, with their outputs, for the docs.

The docs build never executes a notebook (``nb_execution_mode = "off"``): it renders the
copies this script writes to ``docs/notebooks/<name>.ipynb``. Each copy is the committed
``colabs/<name>.ipynb`` (itself generated from the jupytext source ``colabs/<name>.py``)
run top to bottom through nbclient in a kernel of this Python, on CPU, plots inline, plus
one first markdown cell that says how it was run. ``tests/test_docs.py`` checks that every
copy's code cells are still those of its jupytext source, so a stale copy fails the suite.

Usage (from the repository root; one CPU device, as ``tests/test_colabs.py`` runs them)::

    python docs/render_notebooks.py                      # every notebook, DPJAX_FAST=1
    python docs/render_notebooks.py accounting --full    # one notebook, full settings
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import nbclient
import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLABS = ROOT / "colabs"
OUT = ROOT / "docs" / "notebooks"
NOTEBOOKS = ("quickstart", "optax_chains", "accounting", "memory_and_speed", "generation")
HEADER_TAG = "dpjax-rendered"


def _commit() -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return proc.stdout.strip() or "unknown"


def render(name: str, fast: bool = True, timeout: int = 3600) -> pathlib.Path:
    """Executes ``colabs/<name>.ipynb`` and writes ``docs/notebooks/<name>.ipynb``."""
    nb = nbformat.read(COLABS / f"{name}.ipynb", as_version=4)
    env = {
        "DPJAX_FAST": "1" if fast else "0",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "",  # one CPU device: the notebooks do not shard
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    saved = {k: os.environ.get(k) for k in (*env, "MPLBACKEND", "DPJAX_COLAB_OUT")}
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend: figures in outputs
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(env, DPJAX_COLAB_OUT=tmp)  # the kernel inherits this environment
        try:
            client = nbclient.NotebookClient(
                nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": tmp}}
            )
            client.execute()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    seconds = time.time() - start
    settings = "`DPJAX_FAST=1` (the test suite's tiny settings)" if fast else "full settings"
    header = nbformat.v4.new_markdown_cell(
        f"```{{note}}\nStored outputs: `colabs/{name}.ipynb` executed top to bottom with "
        f"{settings} on one CPU device at commit `{_commit()}` ({seconds:.0f} s), by "
        f"`python docs/render_notebooks.py`. The source is the jupytext file "
        f"`colabs/{name}.py`; the docs build does not run it again.\n```"
    )
    header.metadata["tags"] = [HEADER_TAG]
    nb.cells.insert(0, header)
    nb.metadata["dpjax"] = {"fast": fast, "seconds": round(seconds, 1)}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(NOTEBOOKS), choices=NOTEBOOKS)
    parser.add_argument("--full", action="store_true", help="DPJAX_FAST=0 (slow)")
    args = parser.parse_args(argv)
    for name in args.names:
        print(f"{name}: executing", file=sys.stderr, flush=True)
        path = render(name, fast=not args.full)
        print(f"{name}: wrote {path.relative_to(ROOT)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
