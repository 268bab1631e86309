"""DP-BiTFiT-Add: zero biases on bias-free layers == base model, merge == adapted, every
engine == vmap (bitfit analytically), and the trainer's ``*_bitfit_add`` methods."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpjax
from dpjax import peft
from dpjax.engines.bitfit import BIAS
from dpjax.engines.ghost import GHOST
from dpjax.engines.tap_plan import plan_taps
from dpjax.partition import leaf_paths, path_to_str
from dpjax.peft.biases import KEY

B, T, D, H, C = 5, 4, 6, 2, 3
#: Every bias-free layer of the model below (the head has its own bias).
LAYERS = ("block/query", "block/key", "block/value", "block/out", "block/shared", "block/conv")


class Block(nn.Module):
    """Llama-like: RMSNorm, DenseGeneral attention, a Dense called twice, a Conv."""

    bias: bool = False

    @nn.compact
    def __call__(self, x):
        b = self.bias
        h = nn.RMSNorm(name="norm")(x)
        q, k, v = (nn.DenseGeneral((H, D // H), use_bias=b, name=n)(h)
                   for n in ("query", "key", "value"))  # fmt: skip
        att = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D // H), axis=-1)
        o = jnp.einsum("bhts,bshd->bthd", att, v)
        x = x + nn.DenseGeneral(D, axis=(-2, -1), use_bias=b, name="out")(o)
        shared = nn.Dense(D, use_bias=b, name="shared")
        x = x + shared(jnp.tanh(shared(x)))
        return x + nn.Conv(D, (3,), padding="SAME", use_bias=b, name="conv")(jnp.tanh(x))


class Model(nn.Module):
    """``bias=True``: the same architecture with a bias on every layer (the merge target)."""

    bias: bool = False

    @nn.compact
    def __call__(self, x):
        return nn.Dense(C, name="head")(Block(self.bias, name="block")(x).mean(axis=1))


def _loss(model):
    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["x"])
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1)[:, 0]

    return loss_fn


def _setup(seed=1, dtype=jnp.float64):
    """(base loss, base params, batch with row 1 masked out), float64."""
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (B, T, D), dtype)
    batch = {"x": x, "y": jax.random.randint(ky, (B,), 0, C), "mask": jnp.arange(B) != 1}
    params = Model().init(jax.random.fold_in(kp, seed), x[:1])["params"]
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    return _loss(Model()), params, batch


def _random(tree, seed=7, scale=0.3):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef,
        [
            scale * jax.random.normal(k, x.shape, jnp.float64)
            for k, x in zip(keys, leaves, strict=True)
        ],
    )


def _adapted(seed=7):
    """(adapted loss, params with nonzero added biases, batch, spec, base loss)."""
    loss_fn, params, batch = _setup()
    spec = peft.add_biases()
    added = _random(spec.init(None, loss_fn, params, batch), seed)
    return spec.apply(loss_fn), {**params, KEY: added}, batch, spec, loss_fn


def _names(tree):
    return sorted(path_to_str(p) for p in leaf_paths(tree))


def _grads(loss_fn, params, batch, method, trainable, **kw):
    fn = dpjax.clipped_grad(loss_fn, method=method, trainable=trainable, **kw)
    return jax.jit(fn)(params, batch)


def assert_same(want, got):
    """One tolerance scale for the whole tree: an attention key bias has a zero gradient
    (softmax ignores a per-query shift), ~1e-18 of rounding."""
    (gv, iv), (gg, ig) = want, got
    assert jax.tree.structure(gv) == jax.tree.structure(gg)
    scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(gv))
    for path, a, b in zip(leaf_paths(gv), jax.tree.leaves(gv), jax.tree.leaves(gg), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9 * scale, err_msg=path_to_str(path))
        assert a.dtype == b.dtype
    np.testing.assert_allclose(ig.norms, iv.norms, rtol=1e-9)
    np.testing.assert_allclose(ig.group_norms, iv.group_norms, rtol=1e-9)
    np.testing.assert_allclose(ig.loss, iv.loss, rtol=1e-12)


# ---------------------------------------------------------------- the spec
def test_survey_finds_every_bias_free_layer_once_and_lists_the_skipped(x64):
    loss_fn, params, batch = _setup()
    survey = peft.add_biases().survey(loss_fn, params, batch)
    assert tuple(s.name for s in survey.sites) == LAYERS  # "shared" once, called twice
    features = {s.name: s.features for s in survey.sites}
    assert features["block/query"] == (H, D // H) and features["block/conv"] == (D,)
    assert survey.skipped == (("head", "has its own bias (DP-BiTFiT trains it)"),)
    added = peft.add_biases().init(None, loss_fn, params, batch)
    assert _names(added) == sorted(f"{n}/bias" for n in LAYERS)
    assert all(not np.any(x) and x.dtype == jnp.float32 for x in jax.tree.leaves(added))


def test_zero_biases_leave_the_model_unchanged(x64):
    loss_fn, params, batch = _setup()
    spec = peft.add_biases()
    full = {**params, KEY: spec.init(None, loss_fn, params, batch)}
    np.testing.assert_array_equal(spec.apply(loss_fn)(full, batch), loss_fn(params, batch))


def test_merged_model_equals_the_adapted_model(x64):
    adapted, params, batch, spec, loss_fn = _adapted()
    want = adapted(params, batch)
    merged = spec.merge(loss_fn, params, batch)
    assert KEY not in merged and sorted(merged["block"]["query"]) == ["bias", "kernel"]
    np.testing.assert_allclose(_loss(Model(bias=True))(merged, batch), want, rtol=1e-12)
    base = {k: v for k, v in params.items() if k != KEY}
    assert not np.allclose(loss_fn(base, batch), want)  # the biases do change the model


# ---------------------------------------------------------------- the engines
@pytest.mark.parametrize("method", ["bitfit", "ghost"])
@pytest.mark.parametrize("which", ["added", "every_bias"])
def test_engines_equal_vmap(x64, method, which):
    """Clipped sums, per-example norms and losses == vmap; the masked row adds nothing."""
    adapted, params, batch, _, _ = _adapted()
    trainable = peft.is_added_bias if which == "added" else dpjax.bias_only
    want = _grads(adapted, params, batch, "vmap", trainable, l2_clip=0.05)
    got = _grads(adapted, params, batch, method, trainable, l2_clip=0.05)
    assert_same(want, got)
    grads, info = got
    assert float(info.norms[1]) == 0.0 and int(info.num_clipped) > 0
    assert _names(grads[KEY]) == sorted(f"{n}/bias" for n in LAYERS)
    others = {k: v for k, v in grads.items() if k != KEY}
    assert bool(jax.tree.leaves(others)) == (which == "every_bias")  # the head's bias
    masked = {**batch, "x": batch["x"].at[1].set(100.0)}  # a masked row changes nothing
    assert_same(got, _grads(adapted, params, masked, method, trainable, l2_clip=0.05))


@pytest.mark.parametrize("rule", [BIAS, GHOST], ids=["bitfit", "ghost"])
def test_every_added_bias_is_tapped(x64, rule):
    """No added bias takes the exact per-example path: bitfit runs its batched, analytic
    mode (output gradients only, no per-example weight gradients)."""
    adapted, params, batch, _, _ = _adapted()
    paths = leaf_paths(params)
    train = [p for p in paths if p[0] == KEY]
    plan = plan_taps(adapted, params, batch, train, rule)
    assert plan.direct == (), plan.describe(train)
    assert {u.leaf for u in plan.uses} == set(range(len(LAYERS)))
    shared = [u for u in plan.uses if train[u.leaf] == (KEY, "block", "shared", "bias")]
    assert len(shared) == 2  # one tapped call per use of the shared layer, summed


def test_per_layer_clip_groups(x64):
    adapted, params, batch, _, _ = _adapted()
    groups = {name.split("/")[1]: 0.01 * (i + 1) for i, name in enumerate(LAYERS)}
    groups["head"] = 0.05

    def group_fn(path):
        return path[2] if path[0] == KEY else path[0]

    kw = dict(l2_clip=groups, group_fn=group_fn)
    want = _grads(adapted, params, batch, "vmap", dpjax.bias_only, **kw)
    for method in ("bitfit", "ghost"):
        got = _grads(adapted, params, batch, method, dpjax.bias_only, **kw)
        assert_same(want, got)
        assert got[1].group_norms.shape == (B, len(groups))


@pytest.mark.slow
def test_added_biases_with_lora(x64):
    """BiTFiT-Add-LoRA: both specs on one model, bitfit == ghost == vmap."""
    adapted, params, batch, spec, loss_fn = _adapted()
    lora = peft.lora(rank=2, targets="(query|value|shared)$")
    adapters = _random(lora.init(jax.random.key(0), loss_fn, params, batch), seed=3)
    full = {**params, peft.KEY: adapters}
    both = spec.apply(lora.apply(loss_fn))
    other_order = lora.apply(spec.apply(loss_fn))
    np.testing.assert_allclose(other_order(full, batch), both(full, batch), rtol=1e-12)

    def trainable(path, leaf):
        return peft.is_added_bias(path, leaf) or peft.is_adapter(path, leaf)

    want = _grads(both, full, batch, "vmap", trainable, l2_clip=0.05)
    for method in ("bitfit", "ghost"):
        got = _grads(both, full, batch, method, trainable, l2_clip=0.05)
        assert_same(want, got)
        assert jax.tree.leaves(got[0][peft.KEY]) and jax.tree.leaves(got[0][KEY])
    merged = lora.merge(loss_fn, spec.merge(loss_fn, full, batch), batch)
    assert set(merged) == {"block", "head"}
    np.testing.assert_allclose(_loss(Model(bias=True))(merged, batch), both(full, batch),
                               rtol=1e-10)  # fmt: skip


def test_bad_specs_and_targets_are_named(x64):
    loss_fn, params, batch = _setup()
    with pytest.raises(ValueError, match=r"match no bias-free .*block/conv \(no match\)"):
        peft.add_biases("nothing_like_this").init(None, loss_fn, params, batch)
    with pytest.raises(ValueError, match=r"match no bias-free .*head \(has a bias\)"):
        peft.add_biases("head$").init(None, loss_fn, params, batch)
    with pytest.raises(ValueError, match="not a valid regex"):
        peft.add_biases("(")
    with pytest.raises(TypeError, match="regex string"):
        peft.add_biases("")
    spec = peft.add_biases("conv$")
    with pytest.raises(KeyError, match="no 'added_bias' subtree"):
        spec.apply(loss_fn)(params, batch)
    added = spec.init(None, loss_fn, params, batch)
    with pytest.raises(ValueError, match="not called: \\['nowhere'\\]"):
        spec.apply(loss_fn)({**params, KEY: {**added, "nowhere": {"bias": jnp.zeros(D)}}}, batch)
    wrong = {"block": {"conv": {"bias": jnp.zeros(D + 1)}}}
    with pytest.raises(ValueError, match="block/conv.*shape"):
        spec.apply(loss_fn)({**params, KEY: wrong}, batch)


class MLP(nn.Module):
    """Bias-free, computed in bfloat16."""

    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(8, use_bias=False, dtype=jnp.bfloat16, name="up")(x))
        return nn.Dense(C, use_bias=False, dtype=jnp.bfloat16, name="out")(h)


def test_sensitivity_replay_on_a_bf16_model():
    """bf16 model, float32 added biases, bitfit: adding, masking or removing one example
    (and a huge or NaN canary) moves the clipped sum by at most C (1 + 1e-6), plus float32
    rounding of the sum."""
    from dpjax import audit

    x = jax.random.normal(jax.random.key(5), (16, D), jnp.bfloat16)
    batch = {"x": x, "y": jnp.arange(16) % C}
    params = MLP().init(jax.random.key(0), x[:1])["params"]
    loss_fn = _loss(MLP())
    spec = peft.add_biases()
    added = spec.init(None, loss_fn, params, batch)
    full = {**params, KEY: jax.tree.map(lambda b: b + 0.1, added)}
    grad_fn = dpjax.clipped_grad(spec.apply(loss_fn), l2_clip=1.0, method="bitfit",
                                 trainable=peft.is_added_bias)  # fmt: skip
    report = audit.sensitivity_replay(grad_fn, full, batch, rows=2, rtol=1e-6)
    assert report.ok, report.summary()


# ---------------------------------------------------------------- through the trainer
def _toy(method):
    """(toy dp_bitfit_add config run as ``method`` for 2 steps at sigma=1, Trainer)."""
    from dpjax.training import Trainer
    from experiments.configs import toy

    c = toy.get_config("dp_bitfit_add")
    c.method = method
    c.steps, c.epochs = 2, None
    c.privacy.target_epsilon = None
    c.privacy.noise_multiplier = 1.0
    c.privacy.accountant = "rdp"
    c.privacy.noise_seed = 0
    return c, Trainer


@pytest.mark.slow
def test_dp_bitfit_add_trains_only_biases_and_exports_them_merged(tmp_path):
    from dpjax.training.checkpoint import Checkpointer
    from dpjax.training.export import export, load
    from experiments.configs import toy

    c, trainer_cls = _toy("dp_bitfit_add")
    trainer = trainer_cls(c, str(tmp_path), devices=jax.devices()[:1])
    assert trainer.plan.phases[0].engine == "bitfit"
    start = trainer.initial_state().params
    results = trainer.run(progress=False)
    assert results["steps"] == 2 and results["epsilon"] > 0
    end = trainer.state.params
    for path, x, y in zip(leaf_paths(start), jax.tree.leaves(start), jax.tree.leaves(end),
                          strict=True):  # fmt: skip
        name, moved = path_to_str(path), not np.array_equal(x, y)
        assert moved == (name.startswith(f"{KEY}/") or name.startswith("head/")), name
    assert _names(start[KEY]) == ["dense1/bias", "head/bias"]
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=2, fingerprint="unused")
    stored = set(ckpt.read_meta(2)["params"])  # the trained leaves only, like LoRA's
    ckpt.close()
    assert stored == {"/".join(p) for p in leaf_paths(trainer.initial_state().train)}
    assert stored == {f"{KEY}/dense1/bias", f"{KEY}/head/bias", "head/kernel"}
    info = export(str(tmp_path), str(tmp_path / "export"))
    assert info["adapters_merged"]
    params, _ = load(str(tmp_path / "export"))
    assert KEY not in params and "bias" in params["dense1"] and "bias" in params["head"]
    # The exported params run in the toy MLP built with biases (the norm's stays zero).
    params["norm"]["bias"] = np.zeros(c.task.hidden, np.float32)
    rows = dict(trainer.task.train_data.take(np.arange(4)))
    logits = toy.ToyMLP(c.task.hidden, c.task.classes).apply({"params": params}, rows["x"])
    got = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), rows["y"][:, None], 1)
    np.testing.assert_allclose(got[:, 0], trainer.task.loss_fn(end, rows), rtol=1e-5)


def test_dp_bitfit_add_steps_equal_the_vmap_oracle():
    """Two trainer steps of dp_bitfit_add (bitfit engine) == the same steps by vmap."""
    import dataclasses

    from trainer_runs import assert_trees_close, run_steps

    c, trainer_cls = _toy("dp_bitfit_add")
    bitfit = trainer_cls(c, "/unused", devices=jax.devices()[:1])
    oracle = trainer_cls(c, "/unused", devices=jax.devices()[:1])
    phase = dataclasses.replace(oracle.plan.phases[0], engine="vmap")
    oracle.plan = dataclasses.replace(oracle.plan, phases=(phase,))
    assert_trees_close(run_steps(bitfit, 2).params, run_steps(oracle, 2).params, rtol=2e-5,
                       atol=1e-6)  # fmt: skip


def test_nonprivate_bitfit_add_and_the_bias_free_error():
    from dpjax.training.settings import ConfigError

    c, trainer_cls = _toy("nonprivate_bitfit_add")
    trainer = trainer_cls(c, "/unused", devices=jax.devices()[:1])
    assert trainer.plan.phases[0].engine is None and not trainer.plan.private
    for method, hint in (("dp_bitfit", "'dp_bitfit_add'"),
                         ("nonprivate_bitfit", "'nonprivate_bitfit_add'"),
                         ("dp_bitfit_lora", "'dp_bitfit_add' \\(or 'dp_lora'")):  # fmt: skip
        c, _ = _toy(method)
        c.peft.targets = "."
        with pytest.raises(ConfigError, match=f"{method}'.*task 'toy[^']*' has no parameter named "
                                              f"'bias'.*{hint}"):  # fmt: skip
            trainer_cls(c, "/unused", devices=jax.devices()[:1])


def test_bias_targets_are_checked_by_name():
    from dpjax.training.settings import ConfigError, TrainSettings

    c, _ = _toy("dp_bitfit_add")
    c.peft.bias_targets = "("
    with pytest.raises(ConfigError, match="config.peft.bias_targets"):
        TrainSettings.from_config(c)
