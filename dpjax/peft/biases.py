"""DP-BiTFiT-Add: zero-initialised biases on bias-free layers, by interception.

Bias-free models (the Llama family: every ``nn.Dense`` has ``use_bias=False``; ResNets'
convolutions) leave DP-BiTFiT nothing to train. ``add_biases(targets=regex)`` gives every
bias-free ``nn.Dense`` / ``nn.DenseGeneral`` / ``nn.Conv`` call whose module path
(``"layers_0/attn/query"``) the regex finds a bias ``b`` added to its output, ``y + b``
over the layer's features, initialised to zero so that the adapted model starts equal
to its base (the DP-BiTFiT paper's "DP-BiTFiT-Add"). The model is not edited.

The biases live in their own subtree, ``params["added_bias"]``, keyed by the module path,
each a leaf named ``bias`` (``params["added_bias"]["attn"]["query"]["bias"]``): so
:func:`dpjax.bias_only` selects them beside the model's own biases (DP-BiTFiT-Add trains
both), and :data:`is_added_bias` selects them alone. A layer called twice (shared
weights) shares its added bias.

Which layers:

* a matched layer that already has a ``bias`` is *skipped* and listed in
  :attr:`Survey.skipped` (and logged by :meth:`AddedBiases.init`): DP-BiTFiT trains its
  own bias, a second one would only duplicate it;
* a regex that matches no bias-free layer is an error listing the candidates; a match
  inside a lifted transform (``nn.scan``, ...) or a ``DenseGeneral`` with ``batch_dims``
  is an error naming it;
* norm layers (``nn.RMSNorm``, ``nn.LayerNorm(use_bias=False)``) get no bias: in a
  pre-norm transformer a norm's output only feeds Dense layers, whose added biases
  already express any shift ``W b`` of it, and ``nn.RMSNorm`` has no bias to export into.

Every engine covers the added biases with no engine code: the addition runs as a call of
:class:`AddedBias` (``y + bias``), registered in the tap engines' layer table
(:func:`dpjax.engines.layers.register_layer`) as a trailing bias. ``bitfit`` taps it like
any bias (the analytic path: per-example gradients from the output gradients, no weight
gradients), ``ghost`` reads its per-example gradient from the same tap, ``vmap``
differentiates it.

Export: :meth:`AddedBiases.merge` folds each added bias into the base params as a ``bias``
leaf beside the layer's ``kernel``; the same architecture built with ``use_bias=True``
(and the same kernels) then computes exactly the adapted model. The bias-free model
itself ignores such leaves, so an export must rebuild the model with biases.

Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> class MLP(nn.Module):
    ...     bias: bool = False
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         h = nn.relu(nn.Dense(8, use_bias=self.bias, name="up")(x))
    ...         return nn.Dense(2, use_bias=self.bias, name="out")(h)
    >>> model, x = MLP(), jnp.ones((4, 3))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> def fn(p, x):
    ...     return model.apply({"params": p}, x)
    >>> spec = add_biases(targets="^up$")
    >>> added = spec.init(None, fn, params, x)
    >>> jax.tree.map(jnp.shape, added)
    {'up': {'bias': (8,)}}
    >>> full = {**params, KEY: {"up": {"bias": jnp.full(8, 0.5)}}}
    >>> bool(jnp.allclose(spec.apply(fn)({**params, KEY: added}, x), fn(params, x)))
    True
    >>> merged = spec.merge(fn, full, x)  # a "bias" leaf beside up's kernel
    >>> sorted(merged["up"]), KEY in merged
    (['bias', 'kernel'], False)
    >>> with_bias = {**merged, "out": {**merged["out"], "bias": jnp.zeros(2)}}
    >>> bool(jnp.allclose(MLP(bias=True).apply({"params": with_bias}, x),
    ...                   spec.apply(fn)(full, x)))
    True
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.engines import taps
from dpjax.engines.ghost_layers import ExplicitPart
from dpjax.engines.layers import register_layer, trailing_bias
from dpjax.partition import Predicate, _to_path, named, path_to_str, subtree_at

__all__ = [
    "KEY",
    "AddedBias",
    "AddedBiases",
    "BiasSite",
    "Survey",
    "add_biases",
    "is_added_bias",
]

log = logging.getLogger(__name__)

#: The top-level params key of the added biases.
KEY = "added_bias"
#: The layer types that can get a bias (exactly these types, as in the tap engines).
TYPES = (nn.Dense, nn.DenseGeneral, nn.Conv)

#: Predicate of the added-bias leaves (``params["added_bias"]``).
is_added_bias: Predicate = named(KEY)


class AddedBias(nn.Module):
    """``y + bias`` over the trailing ``ndim`` axes of ``y`` (the bias cast to ``y.dtype``).

    The one call through which an added bias enters the model, so the tap engines see it
    as an ordinary trailing bias.

    Example:
        >>> y = jnp.ones((2, 3))
        >>> AddedBias().apply({"params": {"bias": jnp.arange(3.0)}}, y).tolist()
        [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
    """

    ndim: int = 1

    @nn.compact
    def __call__(self, y: jax.Array) -> jax.Array:
        shape = y.shape[y.ndim - self.ndim :]
        bias = self.param("bias", nn.initializers.zeros_init(), shape, jnp.float32)
        return y + bias.astype(y.dtype)


def _ghost_bias(call: Any, a: jax.Array, g: jax.Array, kwargs: Mapping[str, Any]) -> dict:
    """Ghost form of :class:`AddedBias`: the per-example gradient ``sum_t g_t``."""
    del a, kwargs
    k = call.module.ndim
    acc = jnp.promote_types(g.dtype, jnp.float32)
    return {"bias": ExplicitPart(jnp.sum(g.astype(acc), axis=tuple(range(1, g.ndim - k))))}


register_layer(AddedBias, bias=trailing_bias, ghost={"__call__": _ghost_bias})


@dataclasses.dataclass(frozen=True)
class BiasSite:
    """One layer that gets a bias: its module path, the bias shape (the layer's features)
    and the path of its kernel in the base params (where :meth:`AddedBiases.merge` puts
    the bias, beside it)."""

    module_path: tuple[str, ...]
    features: tuple[int, ...]
    kernel_path: tuple[str, ...] | None

    @property
    def name(self) -> str:
        """The module path as ``a/b/c``."""
        return path_to_str(self.module_path)


@dataclasses.dataclass(frozen=True)
class Survey:
    """What :meth:`AddedBiases.survey` found.

    Attributes:
      sites: the matched bias-free layers, once each, in call order.
      skipped: ``(module path, reason)`` of matched layers that get no added bias.
    """

    sites: tuple[BiasSite, ...]
    skipped: tuple[tuple[str, str], ...]


def _features(module: Any, call: taps.LayerCall) -> tuple[int, ...]:
    if isinstance(module, nn.DenseGeneral):
        f = module.features
        return (int(f),) if isinstance(f, int) else tuple(int(v) for v in f)
    return (int(call.output_shape[-1]),)


def _lookup(tree: Mapping[str, Any], path: tuple[str, ...]) -> jax.Array | None:
    node = subtree_at(tree, path)
    if not isinstance(node, Mapping):
        return None
    leaf = node.get("bias")
    return None if leaf is None or isinstance(leaf, Mapping) else leaf


def _bias_paths(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out += _bias_paths(v, (*prefix, str(k)))
        elif k == "bias":
            out.append(prefix)
    return out


def _nest(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _leaf(tree: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _insert(tree: Mapping[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``tree`` (copied along ``path`` only) with the new leaf ``value`` there."""
    out = dict(tree)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = _insert(tree[path[0]], path[1:], value)
    return out


def _outer_interceptors() -> int:
    """How many flax method interceptors are active (0 outside any engine's pass)."""
    from flax.linen import module as linen_module

    return len(getattr(linen_module, "_global_interceptor_stack", ()))


@dataclasses.dataclass(frozen=True)
class AddedBiases:
    """An added-bias specification (see the module docstring); build it with :func:`add_biases`.

    Attributes:
      targets: regex searched in each ``nn.Dense`` / ``nn.DenseGeneral`` / ``nn.Conv``
        call's module path (``"a/b/c"``); anchor it (``"^encoder/"``, ``"(q|v)_proj$"``)
        as needed. The default, ``"."``, matches every layer but the root module.
    """

    targets: str = "."

    def __post_init__(self) -> None:
        if not isinstance(self.targets, str) or not self.targets:
            raise TypeError(f"add_biases targets must be a regex string, got {self.targets!r}")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ValueError(
                f"add_biases targets {self.targets!r} is not a valid regex: {e}"
            ) from e

    def matches(self, module_path: tuple[str, ...]) -> bool:
        """Whether the layer at ``module_path`` is a target (the root never is)."""
        return bool(module_path) and re.search(self.targets, path_to_str(module_path)) is not None

    # ------------------------------------------------------------------ discovery
    def survey(self, fn: Callable[..., Any], params: Any, *args: Any) -> Survey:
        """The target layers ``fn(params, *args)`` calls, once each (shapes only).

        Raises:
          ValueError: no bias-free layer matches (the message lists every candidate and
            why it was not taken), or a match runs inside a lifted transform or is a
            ``DenseGeneral`` with ``batch_dims``.
        """
        calls = taps.discover(lambda p, a: fn(p, *a), params, args)
        found: dict[tuple[str, ...], BiasSite] = {}
        skipped: dict[str, str] = {}
        for call in calls:
            if call.module_type not in TYPES or call.method != "__call__":
                continue
            if not self.matches(call.module_path) or call.module_path in found:
                continue
            if call.param_shape("bias") is not None:
                skipped[call.name] = "has its own bias (DP-BiTFiT trains it)"
                continue
            if call.lifted:
                raise ValueError(f"add_biases target {call.name!r} runs inside a lifted transform")
            m = call.module
            if isinstance(m, nn.DenseGeneral) and tuple(m.batch_dims):
                raise ValueError(
                    f"add_biases target {call.name!r} is a DenseGeneral with batch_dims"
                )
            found[call.module_path] = BiasSite(
                module_path=call.module_path,
                features=_features(m, call),
                kernel_path=taps.resolve(params, call, "kernel"),
            )
        if not found:
            candidates = sorted(
                {
                    f"{c.name} ({'no match' if c.param_shape('bias') is None else 'has a bias'})"
                    for c in calls
                    if c.module_type in TYPES
                }
            )
            raise ValueError(
                f"add_biases targets {self.targets!r} match no bias-free Dense, DenseGeneral "
                f"or Conv layer of {candidates}"
            )
        return Survey(tuple(found.values()), tuple(sorted(skipped.items())))

    def init(self, key: jax.Array | None, fn: Callable[..., Any], params: Any, *args: Any) -> dict:
        """Zero biases for every matched bias-free layer: ``{module path...: {"bias": 0}}``
        (float32, shaped like the layer's features). ``key`` is unused (zeros need none);
        it keeps the adapters' ``init(key, fn, params, *example)`` signature."""
        del key
        survey = self.survey(fn, params, *args)
        if survey.skipped:
            log.info("add_biases: skipped %s", [f"{n}: {why}" for n, why in survey.skipped])
        tree: dict[str, Any] = {}
        for site in survey.sites:
            _nest(tree, site.module_path, {"bias": jnp.zeros(site.features, jnp.float32)})
        return tree

    # ------------------------------------------------------------------ forward
    def apply(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with biases: ``wrapped(params, *args)`` takes the base params plus
        ``params["added_bias"]`` and calls ``fn(base params, *args)`` with each biased
        layer's output ``y`` replaced by ``y + bias`` (jit, grad and vmap trace through it).

        Raises:
          KeyError: ``params`` has no ``"added_bias"`` subtree.
          ValueError: a bias does not fit its layer's output, or its layer was not called
            (checked when no other flax interceptor is active, i.e. outside the engines'
            analysis passes).
        """

        def wrapped(params: Any, *args: Any, **kwargs: Any) -> Any:
            if KEY not in params:
                raise KeyError(f"params has no {KEY!r} subtree (AddedBiases.init makes one)")
            biases = params[KEY]
            base = {k: v for k, v in params.items() if k != KEY}
            used: set[tuple[str, ...]] = set()

            def interceptor(next_fun: Any, a: Any, kw: Any, context: Any) -> Any:
                out = next_fun(*a, **kw)
                module = context.module
                if type(module) not in TYPES or context.method_name != "__call__":
                    return out
                path = tuple(str(p) for p in module.scope.path)
                bias = _lookup(biases, path) if path else None
                if bias is None:
                    return out
                k = jnp.ndim(bias)
                if tuple(out.shape[out.ndim - k :]) != tuple(jnp.shape(bias)):
                    raise ValueError(
                        f"added bias of {path_to_str(path)!r} has shape {jnp.shape(bias)}, "
                        f"not the trailing features of the layer's output {out.shape}"
                    )
                used.add(path)
                return AddedBias(ndim=k).apply({"params": {"bias": bias}}, out)

            plain = not _outer_interceptors()
            with nn.intercept_methods(interceptor):
                out = fn(base, *args, **kwargs)
            unused = [p for p in _bias_paths(biases) if p not in used]
            if unused and plain:
                names = [path_to_str(p) for p in unused]
                raise ValueError(f"added biases of layers that were not called: {names}")
            return out

        return wrapped

    # ------------------------------------------------------------------ export
    def merge(self, fn: Callable[..., Any], params: Any, *args: Any) -> Any:
        """The base params with each added bias as a ``bias`` leaf beside its layer's
        ``kernel`` (cast to the kernel's dtype): the same architecture with
        ``use_bias=True`` on those layers computes ``apply(fn)(params, *args)``.

        Raises:
          ValueError: an added bias has no matching bias-free layer, its kernel is not a
            plain leaf of the params, or a ``bias`` leaf is already there.
        """
        biases = params[KEY]
        base = {k: v for k, v in params.items() if k != KEY}
        sites = {s.module_path: s for s in self.survey(fn, base, *args).sites}
        out = base
        for path in _bias_paths(biases):
            site = sites.get(path)
            if site is None or site.kernel_path is None:
                raise ValueError(f"cannot merge the added bias of {path_to_str(path)!r}: no kernel")
            target = (*site.kernel_path[:-1], "bias")
            if target in {_to_path(kp) for kp, _ in jax.tree_util.tree_leaves_with_path(out)}:
                raise ValueError(f"cannot merge the added bias of {site.name!r}: "
                                 f"{path_to_str(target)!r} already exists")  # fmt: skip
            dtype = jnp.result_type(_leaf(out, site.kernel_path))
            out = _insert(out, target, jnp.asarray(_lookup(biases, path)).astype(dtype))
        return out


def add_biases(targets: str = ".") -> AddedBiases:
    """An :class:`AddedBiases` spec: zero biases on the bias-free Dense / DenseGeneral /
    Conv layers whose module path ``targets`` finds (default: all of them).

    Example:
        >>> add_biases().targets, add_biases(r"(q|v)_proj$").matches(("layers_0", "q_proj"))
        ('.', True)
    """
    return AddedBiases(targets)
