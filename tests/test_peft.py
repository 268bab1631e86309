"""LoRA by interception: base model at B = 0, merge == adapted, every engine == vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_ghost import make, without_nan_row

import dpjax
from dpjax import peft
from dpjax.engines.ghost import GHOST
from dpjax.engines.tap_plan import plan_taps
from dpjax.partition import leaf_paths, path_to_str

#: Attention (DenseGeneral: q/k/v with (heads, dim) outputs, out over two input axes)
#: and MLP (Dense) layers of the tiny models of test_ghost.
TARGETS = r"attn/(query|value|out)$|fc1$"


def _adapted(kind, b=5, seed=3, targets=TARGETS, rank=2):
    """(adapted loss, params with random nonzero adapters, batch, spec)."""
    loss_fn, params, batch = make(kind, b=b)
    spec = peft.lora(rank=rank, alpha=3.0, targets=targets)
    adapters = spec.init(jax.random.key(seed), loss_fn, params, batch)
    # B = 0 at init; give it values so that A's gradients are not zero
    adapters = jax.tree_util.tree_map_with_path(
        lambda kp, x: 0.3 * jax.random.normal(jax.random.key(len(kp)), x.shape, x.dtype)
        if str(kp[-1].key) == "lora_b" else x, adapters,
    )  # fmt: skip
    params = {**params, peft.KEY: jax.tree.map(lambda x: x.astype(jnp.float64), adapters)}
    return spec.apply(loss_fn), params, batch, spec, loss_fn


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "gpt2", "vit"])
def test_fresh_adapters_leave_the_model_unchanged(x64, kind):
    loss_fn, params, batch = make(kind)
    spec = peft.lora(rank=4, targets=TARGETS)
    adapters = spec.init(jax.random.key(0), loss_fn, params, batch)
    shapes = {path_to_str(p) for p in leaf_paths(adapters)}
    assert any("query/lora_a" in s for s in shapes) and any("fc1/lora_b" in s for s in shapes)
    full = {**params, peft.KEY: adapters}
    b = without_nan_row(batch)
    np.testing.assert_array_equal(spec.apply(loss_fn)(full, b), loss_fn(params, b))


@pytest.mark.parametrize("kind", ["bert", "gpt2", "vit"])
def test_merged_model_equals_the_adapted_model(x64, kind):
    adapted, params, batch, spec, loss_fn = _adapted(kind)
    b = without_nan_row(batch)
    want = adapted(params, b)
    merged = spec.merge(loss_fn, params, b)
    assert peft.KEY not in merged
    np.testing.assert_allclose(loss_fn(merged, b), want, rtol=1e-10)
    base = {k: v for k, v in params.items() if k != peft.KEY}
    assert not np.allclose(loss_fn(base, b), want)  # the adapters do change the model


def _both(loss_fn, params, batch, oracle_batch, method, trainable, **kw):
    want = jax.jit(
        lambda p, b: dpjax.clipped_grad(loss_fn, method="vmap", trainable=trainable, **kw)(p, b)
    )
    got = jax.jit(
        lambda p, b: dpjax.clipped_grad(loss_fn, method=method, trainable=trainable, **kw)(p, b)
    )
    return want(params, oracle_batch), got(params, batch)


def assert_same(want, got, rows=slice(None), rtol=1e-5):
    """Like test_ghost's, with one tolerance scale for the whole tree: an attention key
    bias has a zero gradient (softmax ignores a per-query shift), ~1e-18 of rounding."""
    (gv, iv), (gg, ig) = want, got
    assert jax.tree.structure(gv) == jax.tree.structure(gg)
    scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(gv))
    for path, a, b in zip(leaf_paths(gv), jax.tree.leaves(gv), jax.tree.leaves(gg), strict=True):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * scale, err_msg=path_to_str(path))
        assert a.dtype == b.dtype
    np.testing.assert_allclose(ig.norms[rows], iv.norms[rows], rtol=1e-6)
    np.testing.assert_allclose(ig.group_norms[rows], iv.group_norms[rows], rtol=1e-6)
    np.testing.assert_allclose(ig.loss[rows], iv.loss[rows], rtol=1e-10)


def _bias_or_adapter(path, leaf):
    return dpjax.bias_only(path, leaf) or peft.is_adapter(path, leaf)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "gpt2", "vit"])
@pytest.mark.parametrize(
    ("method", "trainable"),
    [("ghost", peft.is_adapter), ("ghost", _bias_or_adapter), ("bitfit", _bias_or_adapter)],
)
def test_adapter_gradients_match_vmap(x64, kind, method, trainable):
    """Row 1 masked out, row 2 NaN (dropped): clipped sums, norms and losses == vmap."""
    adapted, params, batch, _, _ = _adapted(kind)
    want, got = _both(adapted, params, batch, without_nan_row(batch), method, trainable,
                      l2_clip=0.05)  # fmt: skip
    assert_same(want, got, rows=np.array([0, 1, 3, 4]))
    info = got[1]
    assert int(info.num_nonfinite) == 1 and float(info.norms[1]) == 0.0
    assert int(info.num_clipped) > 0
    grads = got[0]
    assert jax.tree.leaves(grads[peft.KEY])  # the adapters are trained
    base = {k: v for k, v in grads.items() if k != peft.KEY}
    if trainable is peft.is_adapter:
        assert not jax.tree.leaves(base)  # nothing else is


def test_ghost_taps_every_adapter(x64):
    """No adapter leaf falls back to the exact path under ghost: all are tapped calls."""
    adapted, params, batch, _, _ = _adapted("gpt2")
    paths = leaf_paths(params)
    plan = plan_taps(adapted, params, without_nan_row(batch), paths, GHOST)
    direct = {path_to_str(paths[i]) for i in plan.direct}
    assert not {d for d in direct if d.startswith("lora/")}, direct


@pytest.mark.slow
def test_group_clipping_of_adapters_and_biases(x64):
    adapted, params, batch, _, _ = _adapted("vit")
    b = without_nan_row(batch)
    groups = {"lora": 0.02, "block": 0.05, "head": 0.1, "patch": 0.1, "ln": 0.1}
    want, got = _both(adapted, params, b, b, "ghost", _bias_or_adapter, l2_clip=groups)
    assert_same(want, got)


@pytest.mark.slow
def test_bad_specs_and_targets_are_named():
    loss_fn, params, batch = make("gpt2", dtype=jnp.float32)
    with pytest.raises(ValueError, match="match no Dense layer of .*fc1"):
        peft.lora(rank=2, targets="nothing_like_this").init(jax.random.key(0), loss_fn,
                                                            params, batch)  # fmt: skip
    with pytest.raises(ValueError, match="rank"):
        peft.lora(rank=0)
    with pytest.raises(ValueError, match="alpha"):
        peft.lora(rank=2, alpha=-1.0)
    with pytest.raises(ValueError, match="not a valid regex"):
        peft.lora(rank=2, targets="(")
    with pytest.raises(ValueError, match="dropout"):
        peft.lora(rank=2, dropout=0.1)
    spec = peft.lora(rank=2, targets="fc1$")
    with pytest.raises(KeyError, match="no 'lora' subtree"):
        spec.apply(loss_fn)(params, batch)
    adapters = spec.init(jax.random.key(0), loss_fn, params, batch)
    adapters["nowhere"] = {"lora_a": jnp.zeros((8, 2)), "lora_b": jnp.zeros((2, 8))}
    with pytest.raises(ValueError, match="not called: \\['nowhere'\\]"):
        spec.apply(loss_fn)({**params, "lora": adapters}, batch)


# ---------------------------------------------------------------- through the trainer
def _toy_trainer(method, engine):
    from dpjax.training import Trainer
    from experiments.configs import toy

    c = toy.get_config("dp_bitfit")
    c.method, c.engine = method, engine
    c.peft.targets, c.peft.rank = ".", 2
    c.steps, c.epochs = 2, None
    c.privacy.target_epsilon = None
    c.privacy.noise_multiplier = 1.0
    c.privacy.accountant = "rdp"
    c.privacy.noise_seed = 0  # the runs compared draw the same batches and noise
    return Trainer(c, "/unused", devices=jax.devices()[:1])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dp_lora", "dp_bitfit_lora"])
def test_lora_methods_train_only_adapters_and_ghost_equals_vmap(method):
    from trainer_runs import assert_trees_close, run_steps

    vmap, ghost = (_toy_trainer(method, e) for e in ("vmap", "ghost"))
    start = vmap.initial_state().params
    a, b = run_steps(vmap, 2).params, run_steps(ghost, 2).params
    assert_trees_close(a, b, rtol=2e-5, atol=1e-6)
    for path, x, y in zip(leaf_paths(start), jax.tree.leaves(start), jax.tree.leaves(a),
                          strict=True):  # fmt: skip
        name = path_to_str(path)
        moved = not np.array_equal(x, y)
        if name.startswith("lora/") or name.endswith("bias") and method == "dp_bitfit_lora":
            assert moved, name
        elif name.endswith("kernel") and not name.startswith(("lora/", "head/")):
            assert not moved, name  # the base weights stay frozen (the toy's head trains)


def test_peft_settings_are_checked_by_name():
    from dpjax.training.settings import ConfigError, TrainSettings
    from experiments.configs import toy

    c = toy.get_config("dp_bitfit")
    c.method, c.peft.rank = "dp_lora", 0
    with pytest.raises(ConfigError, match="config.peft.rank"):
        TrainSettings.from_config(c)


# ---------------------------------------------------------------- privacy invariants
@pytest.mark.slow
@pytest.mark.parametrize("method", ["vmap", "ghost", "bitfit"])
def test_lora_sensitivity_replay_on_a_bf16_model(method):
    """bf16 model, float32 adapters, 64 aligned examples: adding, masking or removing one
    (and a huge or NaN canary) moves the clipped sum by at most C (1 + 1e-6), plus float32
    rounding of the sum."""
    import toy_models

    from dpjax import audit
    from dpjax.audit import planted

    model, params, batch = toy_models.make("mlp", batch_size=64, dtype=jnp.bfloat16)
    batch = {**batch, "x": jnp.abs(batch["x"]) + 3.0, "y": jnp.zeros(64, jnp.int32)}
    loss_fn = toy_models.xent_loss(model)
    spec = peft.lora(rank=2, targets=".")
    adapters = spec.init(jax.random.key(0), loss_fn, params, batch)
    adapters = jax.tree.map(lambda x: x + 0.1, adapters)  # B != 0: A gets gradient too
    full = {**params, peft.KEY: adapters}
    trainable = _bias_or_adapter if method == "bitfit" else peft.is_adapter
    grad_fn = dpjax.clipped_grad(spec.apply(loss_fn), l2_clip=1.0, method=method,
                                 trainable=trainable)  # fmt: skip
    report = audit.sensitivity_replay(grad_fn, full, batch, rows=4, rtol=1e-6)
    assert report.ok, report.summary()
    if method != "ghost":
        return
    with planted.no_clipping():  # the same replay catches unclipped adapter gradients
        bad = audit.sensitivity_replay(grad_fn, full, batch, rows=4, rtol=1e-6)
    assert not bad.ok
