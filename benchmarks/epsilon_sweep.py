"""Test accuracy against epsilon for one experiment config, as a table and a plot.

Each epsilon is one run of the launcher (``python -m experiments.train``) in
``<runs>/eps<eps>/``: of the config with ``{eps}`` replaced by the epsilon when the config
holds ``{eps}`` (a variant per epsilon, e.g. ``text_tasks.py:trec,dp_bitfit,eps{eps}``,
whose hyperparameters may follow epsilon), else of the config with
``--config.privacy.target_epsilon=<eps>``; a run whose
``results.json`` is already there is read, not repeated, so a sweep can be resumed or
assembled from runs made elsewhere. ``--reference`` adds a horizontal line for a
non-private run of the same task (in ``<runs>/nonprivate/``). The table goes to
``<out>/sweep.json`` and the plot to ``<out>/accuracy_vs_epsilon.png``.

Run::

    PYTHONPATH=. python benchmarks/epsilon_sweep.py \\
        --config=experiments/configs/text_tasks.py:trec,dp_bitfit,eps{eps} --epsilons=1,2,3,4,8 \\
        --reference=experiments/configs/text_tasks.py:trec,nonprivate_bitfit \\
        --runs=/tmp/sweep_trec --out=benchmarks/results/epsilon_sweep/trec_dp_bitfit
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time
from typing import Any


def run(config: str, workdir: pathlib.Path, overrides: list[str]) -> dict[str, Any]:
    """The results of the launcher run in ``workdir`` (made now unless already there)."""
    results = workdir / "results.json"
    if not results.exists():
        command = [sys.executable, "-m", "experiments.train", f"--config={config}",
                   f"--workdir={workdir}", "--noprogress", *overrides]  # fmt: skip
        print("running:", " ".join(command), flush=True)
        start = time.time()
        subprocess.run(command, check=True)
        print(f"  done in {time.time() - start:.0f} s", flush=True)
    return json.loads(results.read_text())


def plot(
    rows: list[dict[str, Any]], reference: float | None, title: str, path: pathlib.Path
) -> None:
    """Accuracy (%) against epsilon (log scale), with the non-private line if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["epsilon"] for r in rows], [100 * r["accuracy"] for r in rows], "o-",
            label="DP (delta = 1/(2n))")  # fmt: skip
    if reference is not None:
        ax.axhline(100 * reference, color="gray", ls="--", label="non-private")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("epsilon")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="config file[:variant] of a DP run")
    parser.add_argument("--epsilons", default="1,2,4,8")
    parser.add_argument("--reference", default=None, help="config of a non-private run")
    parser.add_argument("--runs", required=True, help="folder for the runs' workdirs")
    parser.add_argument("--out", required=True, help="folder for the table and the plot")
    args = parser.parse_args()
    runs, out = pathlib.Path(args.runs), pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for eps in (float(e) for e in args.epsilons.split(",")):
        if "{eps}" in args.config:
            config, overrides = args.config.replace("{eps}", f"{eps:g}"), []
        else:
            config, overrides = args.config, [f"--config.privacy.target_epsilon={eps}"]
        res = run(config, runs / f"eps{eps:g}", overrides)
        rows.append(dict(target=eps, epsilon=res["epsilon"], accuracy=res["eval"]["test/accuracy"],
                         noise_multiplier=res["noise_multiplier"], steps=res["steps"]))  # fmt: skip
        print(f"eps {res['epsilon']:.2f}: accuracy {100 * rows[-1]['accuracy']:.2f} %", flush=True)
    reference = None
    if args.reference:
        reference = run(args.reference, runs / "nonprivate", [])["eval"]["test/accuracy"]
        print(f"non-private: accuracy {100 * reference:.2f} %")
    table = dict(config=args.config, reference=args.reference, reference_accuracy=reference,
                 rows=rows)  # fmt: skip
    (out / "sweep.json").write_text(json.dumps(table, indent=2) + "\n")
    title = args.config.split("/")[-1].replace(",eps{eps}", "")
    plot(rows, reference, title, out / "accuracy_vs_epsilon.png")
    print(f"wrote {out / 'sweep.json'} and {out / 'accuracy_vs_epsilon.png'}")


if __name__ == "__main__":
    main()
