"""Evaluator: masked means and ratio metrics over padded batches, against numpy."""

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.data.arrays import ArrayDataset
from dpjax.training.evaluation import Evaluator
from dpjax.training.settings import MeshSettings
from dpjax.training.sharding import make_mesh


def test_ratio_metric_is_the_ratio_of_sums_whatever_the_padding():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=11)
    pred = rng.integers(0, 3, size=11)
    data = ArrayDataset({"y": y, "pred": pred})

    def eval_fn(params, batch):
        correct = (batch["pred"] == batch["y"]).astype(jnp.float32)
        of_2 = (batch["y"] == 2).astype(jnp.float32)
        return {"accuracy": correct, "accuracy_class2": (correct * of_2, of_2)}

    mesh = make_mesh(MeshSettings(), jax.devices()[:1])
    out = Evaluator(eval_fn, {"test": data}, batch_size=4, mesh=mesh)(None)  # 3 padded batches
    assert out["test/accuracy"] == np.float32(np.mean(pred == y))
    want = np.sum((pred == y) & (y == 2)) / np.sum(y == 2)
    np.testing.assert_allclose(out["test/accuracy_class2"], want, rtol=1e-6)
    assert not np.isclose(out["test/accuracy_class2"], np.sum((pred == y) & (y == 2)) / 11)
    assert set(out) == {"test/accuracy", "test/accuracy_class2"}


def test_a_ratio_with_no_example_in_its_denominator_is_left_out_and_logged(caplog):
    y = np.array([0, 1, 1, 0, 1])  # no example of class 2
    data = ArrayDataset({"y": y, "pred": np.array([0, 1, 0, 0, 1])})

    def eval_fn(params, batch):
        correct = (batch["pred"] == batch["y"]).astype(jnp.float32)
        of = {k: (batch["y"] == k).astype(jnp.float32) for k in range(3)}
        return {"accuracy": correct, **{f"accuracy_class{k}": (correct * of[k], of[k])
                                        for k in range(3)}}  # fmt: skip

    mesh = make_mesh(MeshSettings(), jax.devices()[:1])
    with caplog.at_level("INFO", logger="dpjax.training.evaluation"):
        out = Evaluator(eval_fn, {"test": data}, batch_size=4, mesh=mesh)(None)
    assert set(out) == {"test/accuracy", "test/accuracy_class0", "test/accuracy_class1"}
    assert out["test/accuracy_class0"] == 1.0 and np.isclose(out["test/accuracy_class1"], 2 / 3)
    assert "test/accuracy_class2" in caplog.text
