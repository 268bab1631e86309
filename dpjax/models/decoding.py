"""KV-cached greedy and beam-search decoding for the decoders (``GPT2Model``, ``LlamaModel``).

Both run as one ``jax.jit``-compiled program per (model, shapes, settings): the prompt is
processed once into a cache sized ``prompt + max_new_tokens``, then a
``jax.lax.while_loop`` feeds one token per step and stops early once every sequence has
emitted ``eos_id``. Prompts are LEFT-padded (``attention_mask`` 0 on the left); position
ids count real tokens only, so a padded prompt generates what it would alone.

Beam search (per prompt, ``num_beams`` hypotheses): each step extends every live beam by
every token and keeps the ``num_beams`` highest cumulative log-probabilities; a beam that
emitted ``eos_id`` stays in the set with a frozen score (it continues with ``pad_id`` at no
cost). At the end the beam with the best ``score / length ** length_penalty`` wins
(length = generated tokens up to and including eos).

``TRACE_COUNTS`` counts how often each decoder was traced (for tests: a second call with
the same shapes must not retrace).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from dpjax.models import GPT2Model, get_config, greedy_generate
    >>> model = GPT2Model(get_config("gpt2-tiny"), head="lm")
    >>> ids = jnp.ones((2, 4), jnp.int32)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> greedy_generate(model, params, ids, max_new_tokens=5).shape
    (2, 5)
"""

from __future__ import annotations

import collections
import functools
from typing import Any

import jax
import jax.numpy as jnp

from dpjax.models import gpt2, llama
from dpjax.models.gpt2 import GPT2Model
from dpjax.models.llama import LlamaModel

__all__ = ["TRACE_COUNTS", "beam_search", "greedy_generate"]

#: The models with a KV cache that generation drives.
Decoder = GPT2Model | LlamaModel

#: How many times each decoding program was traced (``"greedy"`` / ``"beam"``): tests
#: check that repeated calls with the same shapes reuse one compiled program.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()
_NEG = -1e9  # finite "impossible" log-probability (keeps arithmetic NaN-free)


def _max_positions(model: Decoder) -> tuple[str, int]:
    if isinstance(model, LlamaModel):
        return "max_position_embeddings", model.config.max_position_embeddings
    return "n_positions", model.config.n_positions


def _init_cache(model: Decoder, batch: int, length: int) -> Any:
    module = llama if isinstance(model, LlamaModel) else gpt2
    return module.init_cache(model.config, batch, length, model.dtype)


def _check(model: Decoder, input_ids: jax.Array, max_new_tokens: int) -> None:
    if not isinstance(model, (GPT2Model, LlamaModel)) or model.head != "lm":
        raise ValueError(
            f"generation needs a GPT2Model or LlamaModel with head='lm', got "
            f"{type(model).__name__} with head={getattr(model, 'head', None)!r}"
        )
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, P], got shape {input_ids.shape}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    total = input_ids.shape[1] + max_new_tokens
    name, limit = _max_positions(model)
    if total > limit:
        raise ValueError(
            f"prompt {input_ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds {name}={limit}"
        )


def _prefill(
    model: Decoder, params: Any, input_ids: jax.Array, mask: jax.Array, max_new: int
) -> tuple[jax.Array, Any, jax.Array, jax.Array]:
    """Runs the prompt; returns last log-probs ``[B, V]``, cache, key mask, next position."""
    B, P = input_ids.shape
    cache = _init_cache(model, B, P + max_new)
    key_mask = jnp.concatenate([mask, jnp.ones((B, max_new), bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    logits, cache = model.apply(
        {"params": params}, input_ids, key_mask, position_ids=positions, cache=cache, cache_index=0
    )
    next_pos = jnp.sum(mask.astype(jnp.int32), axis=1)
    return jax.nn.log_softmax(logits[:, -1].astype(jnp.float32)), cache, key_mask, next_pos


def _step(
    model: Decoder,
    params: Any,
    tokens: jax.Array,
    cache: Any,
    key_mask: jax.Array,
    pos: jax.Array,
    index: jax.Array,
) -> tuple[jax.Array, Any]:
    logits, cache = model.apply(
        {"params": params},
        tokens[:, None],
        key_mask,
        position_ids=pos[:, None],
        cache=cache,
        cache_index=index,
    )
    return jax.nn.log_softmax(logits[:, -1].astype(jnp.float32)), cache


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _greedy(
    model: Decoder,
    params: Any,
    input_ids: jax.Array,
    mask: jax.Array,
    max_new: int,
    eos_id: int | None,
    pad_id: int,
) -> jax.Array:
    TRACE_COUNTS["greedy"] += 1
    B, P = input_ids.shape
    logp, cache, key_mask, pos = _prefill(model, params, input_ids, mask, max_new)
    out = jnp.full((B, max_new), pad_id, jnp.int32)
    done = jnp.zeros((B,), bool)

    def cond(state: tuple) -> jax.Array:
        step, _, _, done, _, _ = state
        return (step < max_new) & ~jnp.all(done)

    def body(state: tuple) -> tuple:
        step, logp, out, done, cache, pos = state
        tok = jnp.where(done, pad_id, jnp.argmax(logp, axis=-1).astype(jnp.int32))
        out = out.at[:, step].set(tok)
        if eos_id is not None:
            done = done | (tok == eos_id)
        logp, cache = _step(model, params, tok, cache, key_mask, pos, P + step)
        return step + 1, logp, out, done, cache, pos + 1

    state = (jnp.zeros((), jnp.int32), logp, out, done, cache, pos)
    return jax.lax.while_loop(cond, body, state)[2]


def greedy_generate(
    model: Decoder,
    params: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    max_new_tokens: int,
    eos_id: int | None = None,
    pad_id: int | None = None,
) -> jax.Array:
    """Greedy decoding; returns the generated ids ``[B, max_new_tokens]``.

    Args:
      model: a ``GPT2Model`` or ``LlamaModel`` with ``head="lm"``.
      params: its parameters.
      input_ids: left-padded prompts ``[B, P]``.
      attention_mask: ``[B, P]``, 1 for prompt tokens (default: all ones).
      max_new_tokens: fixed output length.
      eos_id: a sequence stops after emitting it (``None``: never stops early).
      pad_id: fills positions after eos (default ``eos_id``, else 0).
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    _check(model, input_ids, max_new_tokens)
    mask = jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask
    pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    return _greedy(
        model, params, input_ids, jnp.asarray(mask).astype(bool), max_new_tokens, eos_id, pad
    )


def _gather_beams(x: jax.Array, beam: jax.Array, B: int, K: int) -> jax.Array:
    """Reorders rows of ``x`` ``[B*K, ...]`` by ``beam`` ``[B, K]`` (indices within a prompt)."""
    x = x.reshape((B, K) + x.shape[1:])
    idx = beam.reshape((B, K) + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1).reshape((B * K,) + x.shape[2:])


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8))
def _beam(
    model: Decoder,
    params: Any,
    input_ids: jax.Array,
    mask: jax.Array,
    max_new: int,
    K: int,
    eos_id: int | None,
    pad_id: int,
    alpha: float,
) -> tuple[jax.Array, jax.Array]:
    TRACE_COUNTS["beam"] += 1
    B, P = input_ids.shape
    logp0, cache, key_mask, pos = _prefill(model, params, input_ids, mask, max_new)
    V = logp0.shape[-1]
    rep = functools.partial(jnp.repeat, repeats=K, axis=0)
    cache = jax.tree.map(rep, cache)
    key_mask, pos = rep(key_mask), rep(pos)
    logp = jnp.broadcast_to(logp0[:, None], (B, K, V))
    score = jnp.where(jnp.arange(K) == 0, 0.0, _NEG)[None].repeat(B, 0)
    pad_only = jnp.where(jnp.arange(V) == pad_id, 0.0, _NEG)
    state = (
        jnp.zeros((), jnp.int32),
        logp,
        score,
        jnp.full((B, K, max_new), pad_id, jnp.int32),
        jnp.zeros((B, K), bool),
        jnp.zeros((B, K), jnp.int32),
        cache,
    )

    def cond(state: tuple) -> jax.Array:
        step, _, _, _, done, _, _ = state
        return (step < max_new) & ~jnp.all(done)

    def body(state: tuple) -> tuple:
        step, logp, score, seqs, done, length, cache = state
        step_logp = jnp.where(done[..., None], pad_only, logp)
        cand = (score[..., None] + step_logp).reshape(B, K * V)
        score, flat = jax.lax.top_k(cand, K)
        beam, tok = flat // V, (flat % V).astype(jnp.int32)
        seqs = jnp.take_along_axis(seqs, beam[..., None], axis=1).at[:, :, step].set(tok)
        was_done = jnp.take_along_axis(done, beam, axis=1)
        length = jnp.take_along_axis(length, beam, axis=1) + (~was_done).astype(jnp.int32)
        done = was_done | ((tok == eos_id) if eos_id is not None else False)
        cache = jax.tree.map(lambda x: _gather_beams(x, beam, B, K), cache)
        new_logp, cache = _step(
            model, params, tok.reshape(-1), cache, key_mask, pos + step, P + step
        )
        return step + 1, new_logp.reshape(B, K, V), score, seqs, done, length, cache

    _, _, score, seqs, _, length, _ = jax.lax.while_loop(cond, body, state)
    normalised = score / jnp.maximum(length, 1).astype(jnp.float32) ** alpha
    best = jnp.argmax(normalised, axis=1)
    best_seq = jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0]
    return best_seq, jnp.take_along_axis(normalised, best[:, None], axis=1)[:, 0]


def beam_search(
    model: Decoder,
    params: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_id: int | None = None,
    pad_id: int | None = None,
    length_penalty: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Beam search; returns ``(ids [B, max_new_tokens], scores [B])`` of the best beams.

    Arguments as in :func:`greedy_generate`, plus ``num_beams`` (``<= vocab``) and
    ``length_penalty`` (exponent of the length normalisation of the final choice).
    ``num_beams=1`` is greedy decoding.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    _check(model, input_ids, max_new_tokens)
    if not 1 <= num_beams <= model.config.vocab_size:
        raise ValueError(f"num_beams must be in [1, vocab_size], got {num_beams}")
    mask = jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask
    pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    return _beam(
        model,
        params,
        input_ids,
        jnp.asarray(mask).astype(bool),
        max_new_tokens,
        num_beams,
        eos_id,
        pad,
        float(length_penalty),
    )
