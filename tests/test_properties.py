"""Property-based tests (hypothesis) over random small models, batches, masks and clips.

For every generated case, in float64: the engine agrees with the ``vmap`` oracle; every
example alone contributes at most its clip norm (per group, and the total at most the
sensitivity); and the sensitivity replay holds (``||S(D) - S(D')|| <= Delta``).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_clipping import assert_tree_close

import dpjax
from dpjax import audit
from dpjax.partition import leaf_paths


class Net(nn.Module):
    widths: tuple[int, ...]
    norm: bool
    conv: bool
    classes: int

    @nn.compact
    def __call__(self, x):
        if self.conv:
            x = nn.Conv(3, (2,), name="conv")(x).reshape(x.shape[0], -1)
        for i, w in enumerate(self.widths):
            x = jnp.tanh(nn.Dense(w, name=f"dense{i}")(x))
            if self.norm:
                x = nn.LayerNorm(name=f"norm{i}")(x)
        return nn.Dense(self.classes, name="head")(x)


@st.composite
def cases(draw):
    widths = tuple(draw(st.lists(st.integers(2, 6), min_size=1, max_size=2)))
    model = Net(widths, draw(st.booleans()), draw(st.booleans()), draw(st.integers(2, 3)))
    size = draw(st.integers(1, 6))
    dim = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**16))
    mask = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0]))
    method = draw(st.sampled_from(["ghost", "bitfit"]))
    per_layer = draw(st.booleans())
    clip_fn = draw(st.sampled_from(["abadi", "automatic"]))
    norms = [draw(st.floats(0.01, 5.0)) for _ in range(2)]
    return model, size, dim, seed, mask, scale, method, per_layer, clip_fn, norms


def _setup(case):
    model, size, dim, seed, mask, scale, method, per_layer, clip_fn, norms = case
    rng = np.random.default_rng(seed)
    shape = (size, 3, dim) if model.conv else (size, dim)
    x = jnp.asarray(rng.normal(size=shape) * scale)
    params = model.init(jax.random.key(seed), x[:1])["params"]
    params = jax.tree.map(lambda p: p.astype(jnp.float64) + rng.normal() * 0.1, params)
    batch = {"x": x, "y": jnp.asarray(rng.integers(0, model.classes, size)), "mask": mask}

    def loss_fn(p, b):
        logits = model.apply({"params": p}, b["x"])
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), b["y"][:, None], 1)[:, 0]

    trainable = dpjax.bias_only if method == "bitfit" else None
    if per_layer:
        train, _ = dpjax.partition(params, trainable)
        groups = sorted({path[0] for path in leaf_paths(train)})
        l2_clip = {g: norms[i % 2] for i, g in enumerate(groups)}
    else:
        l2_clip = norms[0]
    kw = dict(l2_clip=l2_clip, trainable=trainable, clip_fn=clip_fn)
    if clip_fn == "automatic":
        kw["gamma"] = 0.01
    return params, batch, loss_fn, method, kw


@pytest.mark.slow
@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cases())
def test_engines_match_vmap_bound_every_contribution_and_replay(case):
    with jax.enable_x64(True):
        params, batch, loss_fn, method, kw = _setup(case)
        engine = dpjax.clipped_grad(loss_fn, method=method, **kw)
        step = jax.jit(engine)
        got, info = step(params, batch)
        want, want_info = jax.jit(dpjax.clipped_grad(loss_fn, method="vmap", **kw))(params, batch)
        assert_tree_close(got, want, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(info.norms, want_info.norms, rtol=1e-8, atol=1e-12)
        # every example alone: within its clip norms (per group) and the sensitivity
        plan = engine.plan(params)
        for i in range(len(batch["mask"])):
            alone = dict(batch, mask=np.arange(len(batch["mask"])) == i)
            s, alone_info = step(params, alone)
            total = np.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(s)))
            assert total <= engine.sensitivity * (1 + 1e-9)
            factors = np.asarray(alone_info.clip_factors[i])
            group = np.asarray(alone_info.group_norms[i])
            assert np.all(factors * group <= np.asarray(plan.clip_norms) * (1 + 1e-9))
        rep = audit.sensitivity_replay(engine, params, batch, rows=2, rtol=1e-9)
        assert rep.ok, rep.summary()


def test_property_test_can_fail():
    """The same check on a broken engine (no clipping) fails: the property has teeth."""
    from dpjax.audit import planted

    with jax.enable_x64(True), planted.no_clipping():
        model = Net((3,), False, False, 2)
        case = (model, 4, 3, 0, np.ones(4, bool), 10.0, "ghost", False, "abadi", [0.01, 0.01])
        params, batch, loss_fn, method, kw = _setup(case)
        engine = dpjax.clipped_grad(loss_fn, method=method, **kw)
        with pytest.raises(AssertionError):
            rep = audit.sensitivity_replay(engine, params, batch, rows=3, rtol=1e-9)
            assert rep.ok, rep.summary()
