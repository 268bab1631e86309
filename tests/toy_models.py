"""Small linen models and losses shared by the engine tests (an MLP, a CNN, a transformer)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    hidden: int = 8
    classes: int = 3

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.hidden, name="dense1")(x)
        x = nn.LayerNorm(name="norm")(jnp.tanh(x))
        return nn.Dense(self.classes, name="head")(x)


class CNN(nn.Module):
    classes: int = 3

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), strides=(2, 2), name="conv1")(x)
        x = nn.GroupNorm(num_groups=2, name="gn")(x)
        x = nn.relu(x)
        x = nn.Conv(4, (3, 3), padding="VALID", feature_group_count=2, name="conv2")(x)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.classes, name="head")(x)


class Block(nn.Module):
    """A pre-LN transformer encoder block over token embeddings, with a pooled head."""

    vocab: int = 11
    d: int = 8
    heads: int = 2
    classes: int = 3

    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(self.vocab, self.d, name="embed")(ids)
        h = nn.LayerNorm(name="ln1")(x)
        q = nn.DenseGeneral((self.heads, self.d // self.heads), name="query")(h)
        k = nn.DenseGeneral((self.heads, self.d // self.heads), name="key")(h)
        v = nn.DenseGeneral((self.heads, self.d // self.heads), name="value")(h)
        att = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]))
        o = jnp.einsum("bhqk,bkhd->bqhd", att, v)
        x = x + nn.DenseGeneral(self.d, axis=(-2, -1), name="out")(o)
        h = nn.LayerNorm(name="ln2")(x)
        x = x + nn.Dense(self.d, name="mlp2")(nn.gelu(nn.Dense(2 * self.d, name="mlp1")(h)))
        return nn.Dense(self.classes, name="head")(x.mean(axis=1))


def xent_loss(model):
    """Per-example cross-entropy loss_fn(params, batch) for a classifier model."""

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["x"])
        logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
        return -jnp.take_along_axis(logp, batch["y"][:, None], axis=1)[:, 0]

    return loss_fn


def make(kind: str, batch_size: int = 6, seed: int = 0, dtype=jnp.float32):
    """(model, params, batch) for kind in {"mlp", "cnn", "block"}."""
    kx, ky, kp = jax.random.split(jax.random.key(seed), 3)
    if kind == "mlp":
        model, x = MLP(), jax.random.normal(kx, (batch_size, 5), dtype)
    elif kind == "cnn":
        model, x = CNN(), jax.random.normal(kx, (batch_size, 8, 8, 2), dtype)
    elif kind == "block":
        model, x = Block(), jax.random.randint(kx, (batch_size, 7), 0, 11)
    else:
        raise ValueError(kind)
    params = model.init(kp, x[:1])["params"]
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    y = jax.random.randint(ky, (batch_size,), 0, 3)
    return model, params, {"x": x, "y": y}
