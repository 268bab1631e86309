"""The vmap engine and the clipped_grad front door against a naive per-example loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_models

import dpjax


def naive_clipped_sum(
    loss_fn, params, batch, clip, trainable=None, clip_fn="abadi", gamma=None, group_of=None
):
    """Oracle: one jax.grad per example in a Python loop, clipping in numpy float64."""
    size = len(batch["y"])
    mask = np.asarray(batch.get("mask", np.ones(size, bool)))
    train, frozen = dpjax.partition(params, trainable)
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(train)[0]]
    names = ["/".join(str(k.key) for k in p) for p in paths]
    total = [np.zeros(np.shape(x)) for x in jax.tree.leaves(train)]
    norms = []
    for i in range(size):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        g = jax.grad(lambda t: loss_fn(dpjax.combine(t, frozen), one)[0])(train)
        leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(g)]
        groups = [group_of(n) if group_of else "all" for n in names]
        sq = {}
        for grp, leaf in zip(groups, leaves):
            sq[grp] = sq.get(grp, 0.0) + float(np.sum(leaf**2))
        norms.append(np.sqrt(sum(sq.values())) if mask[i] else 0.0)
        if not mask[i] or not all(np.isfinite(v) for v in sq.values()):
            continue
        for j, (grp, leaf) in enumerate(zip(groups, leaves)):
            c_k = clip[grp] if isinstance(clip, dict) else clip
            n = np.sqrt(sq[grp])
            factor = min(1.0, c_k / n) if clip_fn == "abadi" else c_k / (n + gamma)
            total[j] += factor * leaf
    return jax.tree.unflatten(jax.tree.structure(train), total), np.array(norms)


def assert_tree_close(a, b, rtol=1e-9, atol=1e-12):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "cnn", "block"])
def test_vmap_matches_naive_loop(x64, kind):
    model, params, batch = toy_models.make(kind, dtype=jnp.float64)
    loss_fn = toy_models.xent_loss(model)
    grad_fn = jax.jit(dpjax.clipped_grad(loss_fn, l2_clip=0.05))
    grads, info = grad_fn(params, batch)
    want, norms = naive_clipped_sum(loss_fn, params, batch, 0.05)
    assert_tree_close(grads, want)
    np.testing.assert_allclose(info.norms, norms, rtol=1e-10)
    assert int(info.num_clipped) > 0  # the test exercises clipping, not just summation


def test_small_norms_are_not_scaled_up(x64):
    model, params, batch = toy_models.make("mlp", dtype=jnp.float64)
    loss_fn = toy_models.xent_loss(model)
    grads, info = dpjax.clipped_grad(loss_fn, l2_clip=1e6)(params, batch)
    plain = jax.grad(lambda p: loss_fn(p, batch).sum())(params)
    assert_tree_close(grads, plain)
    np.testing.assert_array_equal(info.clip_factors, 1.0)


def test_automatic_clipping(x64):
    model, params, batch = toy_models.make("block", dtype=jnp.float64)
    loss_fn = toy_models.xent_loss(model)
    fn = dpjax.clipped_grad(loss_fn, l2_clip=0.5, clip_fn="automatic", gamma=0.01)
    grads, info = fn(params, batch)
    want, _ = naive_clipped_sum(loss_fn, params, batch, 0.5, clip_fn="automatic", gamma=0.01)
    assert_tree_close(grads, want)
    # every clipped per-example norm is strictly below C: the sensitivity is C
    assert np.all(np.asarray(info.clip_factors[:, 0] * info.norms) < 0.5)
    assert fn.sensitivity == 0.5


def test_automatic_needs_gamma_and_abadi_rejects_it():
    with pytest.raises(ValueError, match="gamma"):
        dpjax.clipped_grad(lambda p, b: b["x"], l2_clip=1.0, clip_fn="automatic")
    with pytest.raises(ValueError, match="gamma=0.1"):
        dpjax.clipped_grad(lambda p, b: b["x"], l2_clip=1.0, gamma=0.1)


def test_group_clipping(x64):
    model, params, batch = toy_models.make("mlp", dtype=jnp.float64)
    loss_fn = toy_models.xent_loss(model)
    clip = {"dense1": 0.01, "norm": 0.02, "head": 0.03}
    fn = dpjax.clipped_grad(loss_fn, l2_clip=clip)
    grads, info = fn(params, batch)
    want, norms = naive_clipped_sum(
        loss_fn, params, batch, clip, group_of=lambda n: n.split("/")[0]
    )
    assert_tree_close(grads, want)
    np.testing.assert_allclose(info.norms, norms, rtol=1e-10)
    assert info.group_norms.shape == (6, 3)
    assert fn.sensitivity == pytest.approx(np.sqrt(0.01**2 + 0.02**2 + 0.03**2))


def test_group_clipping_errors_name_the_problem():
    model, params, batch = toy_models.make("mlp")
    loss_fn = toy_models.xent_loss(model)
    with pytest.raises(ValueError, match="'head/bias'.*'head'"):
        dpjax.clipped_grad(loss_fn, l2_clip={"dense1": 1.0, "norm": 1.0})(params, batch)
    with pytest.raises(ValueError, match="typo"):
        dpjax.clipped_grad(loss_fn, l2_clip={"dense1": 1.0, "norm": 1.0, "head": 1.0, "typo": 1.0})(
            params, batch
        )


@pytest.mark.slow
def test_mask_rows_contribute_nothing(x64):
    model, params, batch = toy_models.make("cnn", dtype=jnp.float64)
    loss_fn = toy_models.xent_loss(model)
    mask = np.array([True, False, True, True, False, True])
    grads, info = dpjax.clipped_grad(loss_fn, l2_clip=0.1)(params, {**batch, "mask": mask})
    kept = {k: v[mask] for k, v in batch.items()}
    want, _ = dpjax.clipped_grad(loss_fn, l2_clip=0.1)(params, kept)
    assert_tree_close(grads, want)
    assert np.all(np.asarray(info.loss)[~mask] == 0) and np.all(np.asarray(info.loss)[mask] > 0)
    assert int(info.num_valid) == 4


@pytest.mark.slow
def test_nonfinite_example_is_dropped_and_counted(x64):
    model, params, batch = toy_models.make("mlp", dtype=jnp.float64)
    loss_fn = toy_models.xent_loss(model)
    x = np.array(batch["x"])
    x[2, 0] = np.nan
    grads, info = jax.jit(dpjax.clipped_grad(loss_fn, l2_clip=0.1))(params, {**batch, "x": x})
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert int(info.num_nonfinite) == 1
    keep = np.arange(6) != 2
    want, _ = dpjax.clipped_grad(loss_fn, l2_clip=0.1)(
        params, {k: v[keep] for k, v in batch.items()}
    )
    assert_tree_close(grads, want)


@pytest.mark.parametrize("microbatch_size", [1, 4, 6])
def test_microbatching_does_not_change_the_result(x64, microbatch_size):
    model, params, batch = toy_models.make("block", dtype=jnp.float64)
    loss_fn = toy_models.xent_loss(model)
    batch = {**batch, "mask": np.array([True, True, False, True, True, True])}
    whole, info = dpjax.clipped_grad(loss_fn, l2_clip=0.05)(params, batch)
    fn = jax.jit(dpjax.clipped_grad(loss_fn, l2_clip=0.05, microbatch_size=microbatch_size))
    parts, info_mb = fn(params, batch)
    assert_tree_close(parts, whole)
    np.testing.assert_allclose(info_mb.norms, info.norms, rtol=1e-10)
    np.testing.assert_allclose(info_mb.loss, info.loss, rtol=1e-10)


def test_frozen_leaves_are_none_and_not_differentiated():
    model, params, batch = toy_models.make("mlp")
    calls = []

    def loss_fn(p, b):
        calls.append(type(p["dense1"]["kernel"]))
        return toy_models.xent_loss(model)(p, b)

    grads, _ = dpjax.clipped_grad(loss_fn, l2_clip=1.0, trainable=dpjax.bias_only)(params, batch)
    assert grads["dense1"]["kernel"] is None and grads["dense1"]["bias"] is not None
    assert grads["norm"]["scale"] is None
    # the kernel reaches the loss as a plain (non-differentiated) array
    assert all("JVP" not in t.__name__ for t in calls)


def test_bf16_model_keeps_float32_norms():
    model, params, batch = toy_models.make("mlp", dtype=jnp.bfloat16)
    loss_fn = toy_models.xent_loss(model)
    grads, info = dpjax.clipped_grad(loss_fn, l2_clip=0.1)(params, batch)
    assert info.norms.dtype == jnp.float32 and info.clip_factors.dtype == jnp.float32
    # The clipped sum stays float32 until the noise is added (privatize casts after it).
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    p32 = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    b32 = {**batch, "x": batch["x"].astype(jnp.float32)}
    want, info32 = dpjax.clipped_grad(loss_fn, l2_clip=0.1)(p32, b32)
    np.testing.assert_allclose(info.norms, info32.norms, rtol=5e-2)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=0.1, atol=2e-3)


def test_bad_inputs_have_clear_errors():
    model, params, batch = toy_models.make("mlp")
    loss_fn = toy_models.xent_loss(model)
    with pytest.raises(ValueError, match="-1"):
        dpjax.clipped_grad(loss_fn, l2_clip=-1.0)
    with pytest.raises(ValueError, match="'bogus'"):
        dpjax.clipped_grad(loss_fn, l2_clip=1.0, method="bogus")
    with pytest.raises(ValueError, match="'ab'"):
        dpjax.clipped_grad(loss_fn, l2_clip=1.0, clip_fn="ab")
    with pytest.raises(ValueError, match="microbatch_size.*0"):
        dpjax.clipped_grad(loss_fn, l2_clip=1.0, microbatch_size=0)
    scalar_loss = lambda p, b: loss_fn(p, b).mean()  # noqa: E731
    with pytest.raises(ValueError, match=r"shape \[B\].*\(\)"):
        dpjax.clipped_grad(scalar_loss, l2_clip=1.0)(params, batch)
    with pytest.raises(ValueError, match="different leading dimensions"):
        dpjax.clipped_grad(loss_fn, l2_clip=1.0)(params, {**batch, "y": batch["y"][:4]})
    with pytest.raises(ValueError, match="selected nothing"):
        dpjax.clipped_grad(loss_fn, l2_clip=1.0, trainable=lambda p, x: False)(params, batch)


def test_named_adds_leaves_to_bias_only():
    model, params, _ = toy_models.make("mlp")
    train, frozen = dpjax.partition(params, dpjax.named("head", base=dpjax.bias_only))
    assert train["head"]["kernel"] is not None and train["dense1"]["bias"] is not None
    assert train["dense1"]["kernel"] is None and frozen["dense1"]["kernel"] is not None
    back = dpjax.combine(train, frozen)
    assert jax.tree.structure(back) == jax.tree.structure(params)


@pytest.mark.slow
def test_nonfinite_row_in_a_conv_model_does_not_poison_others(x64):
    """A batched conv kernel gradient mixes rows via nan*0; the front door isolates them."""
    model, params, batch = toy_models.make("cnn", dtype=jnp.float64)
    loss_fn = toy_models.xent_loss(model)
    x = np.array(batch["x"])
    x[2, 0, 0, 0] = np.nan
    fn = jax.jit(dpjax.clipped_grad(loss_fn, l2_clip=0.1))
    grads, info = fn(params, {**batch, "x": x})
    assert int(info.num_nonfinite) == 1
    assert np.all(np.isfinite(np.delete(np.asarray(info.norms), 2)))
    keep = np.arange(6) != 2
    want, _ = dpjax.clipped_grad(loss_fn, l2_clip=0.1)(
        params, {k: v[keep] for k, v in batch.items()}
    )
    assert_tree_close(grads, want)
    # without isolation the same batch loses every row: the test can fail
    raw = dpjax.clipped_grad(loss_fn, l2_clip=0.1, isolate_nonfinite=False)
    _, raw_info = jax.jit(raw)(params, {**batch, "x": x})
    assert int(raw_info.num_nonfinite) > 1
