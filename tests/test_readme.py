"""The README's API example runs and learns under DP."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_prints_epsilon():
    text = README.read_text()
    block = re.search(r"<!-- readme-example -->\n```python\n(.*?)```", text, re.S)
    assert block, "README lost its example block"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.group(1), "README.md", "exec"), {})
    acc, eps = map(float, re.findall(r"accuracy ([\d.]+), eps ([\d.]+)", out.getvalue())[0])
    assert acc > 0.85 and 0.5 < eps < 20
