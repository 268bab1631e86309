"""LoRA adapters on any Flax linen model, by interception: the model is not edited.

``lora(rank=r, alpha=a, targets=regex)`` matches the ``nn.Dense`` / ``nn.DenseGeneral``
calls whose module path (``"encoder/layer_0/attention/self/query"``) the regex finds, and
adds to each matched output ``y`` the low-rank update ``((x A) * alpha / r) B``: ``A``
(Gaussian, std ``1/sqrt(fan_in)``) maps the layer input to ``r`` features and ``B`` (zero)
maps those to the layer's features, so an adapted model starts equal to its base. The
adapters live in their own subtree, ``params["lora"]``, keyed by the module path; the base
weights are untouched, and a layer called twice (shared weights) shares its adapter.

``A`` and ``B`` run as two bias-free ``nn.Dense`` (or ``nn.DenseGeneral``) calls of their
own, so every engine covers them with no extra code: ``vmap`` differentiates them,
``ghost`` taps them like any linear layer (per-example norms in Gram or direct form from
the inputs ``x`` and ``x A * alpha / r`` and the output gradients, in the one backward
pass), and ``bitfit`` trains them beside the biases (their exact per-example gradient in
the same pass).

Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> class MLP(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return nn.Dense(2, name="out")(nn.relu(nn.Dense(8, name="up")(x)))
    >>> model, x = MLP(), jnp.ones((4, 3))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> def fn(p, x):
    ...     return model.apply({"params": p}, x)
    >>> spec = lora(rank=2, targets="^up$")
    >>> adapters = spec.init(jax.random.key(1), fn, params, x)
    >>> jax.tree.map(jnp.shape, adapters)
    {'up': {'lora_a': (3, 2), 'lora_b': (2, 8)}}
    >>> full = {**params, "lora": adapters}
    >>> bool(jnp.allclose(spec.apply(fn)(full, x), fn(params, x)))  # B = 0: the base model
    True
    >>> merged = spec.merge(fn, full, x)  # each adapter folded into its base kernel
    >>> sorted(merged), merged["up"]["kernel"].shape
    (['out', 'up'], (3, 8))
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.engines import taps
from dpjax.partition import Predicate, _to_path, named, path_to_str, subtree_at
from dpjax.validate import check_int, check_real

__all__ = ["KEY", "LoRA", "Site", "is_adapter", "lora"]

#: The top-level params key of the adapters.
KEY = "lora"
_TYPES = (nn.Dense, nn.DenseGeneral)

#: Predicate of the adapter leaves (``params["lora"]``): the trainable set of DP-LoRA.
is_adapter: Predicate = named(KEY)


@dataclasses.dataclass(frozen=True)
class Site:
    """One adapted layer: its module path, the shapes its adapter contracts and produces,
    and the path of its kernel in the base params (for :meth:`LoRA.merge`)."""

    module_path: tuple[str, ...]
    in_shape: tuple[int, ...]
    features: tuple[int, ...]
    axis: tuple[int, ...]
    general: bool
    kernel_path: tuple[str, ...] | None

    @property
    def name(self) -> str:
        """The module path as ``a/b/c``."""
        return path_to_str(self.module_path)


def _axis(module: Any) -> tuple[int, ...]:
    if isinstance(module, nn.DenseGeneral):
        return (module.axis,) if isinstance(module.axis, int) else tuple(module.axis)
    return (-1,)


def _features(module: Any) -> tuple[int, ...]:
    f = module.features
    return (int(f),) if isinstance(f, int) else tuple(int(v) for v in f)


def _lookup(tree: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any] | None:
    node = subtree_at(tree, path)
    return node if isinstance(node, Mapping) and "lora_a" in node else None


def _nest(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


@dataclasses.dataclass(frozen=True)
class LoRA:
    """A LoRA specification (see the module docstring); build it with :func:`lora`.

    Attributes:
      rank: the adapters' rank ``r`` (>= 1).
      alpha: the update is scaled by ``alpha / rank``.
      targets: regex searched in each ``nn.Dense`` / ``nn.DenseGeneral`` call's module
        path (``"a/b/c"``); anchor it (``"^encoder/"``, ``"(query|value)$"``) as needed.
      dropout: adapter dropout; only ``0.0`` (a DP step's per-example gradients would
        need a per-example key).
    """

    rank: int
    alpha: float
    targets: str
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_int("lora rank", self.rank, 1)
        check_real("lora alpha", self.alpha, "(0, inf)")
        if not isinstance(self.targets, str):
            raise TypeError(f"lora targets must be a regex string, got {self.targets!r}")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ValueError(f"lora targets {self.targets!r} is not a valid regex: {e}") from e
        if self.dropout != 0.0:
            raise ValueError(f"lora dropout must be 0.0, got {self.dropout!r}")

    @property
    def scale(self) -> float:
        """``alpha / rank``."""
        return self.alpha / self.rank

    def matches(self, module_path: tuple[str, ...]) -> bool:
        """Whether the layer at ``module_path`` gets an adapter."""
        return bool(module_path) and re.search(self.targets, path_to_str(module_path)) is not None

    # ------------------------------------------------------------------ discovery
    def sites(self, fn: Callable[..., Any], params: Any, *args: Any) -> tuple[Site, ...]:
        """The layers ``fn(params, *args)`` calls that match, once each (shapes only).

        Raises:
          ValueError: nothing matches, or a match runs inside a lifted transform
            (``nn.scan``, ...) or is a ``DenseGeneral`` with ``batch_dims``.
        """
        calls = taps.discover(lambda p, a: fn(p, *a), params, args)
        found: dict[tuple[str, ...], Site] = {}
        for call in calls:
            if call.module_type not in _TYPES or call.method != "__call__":
                continue
            if not self.matches(call.module_path) or call.module_path in found:
                continue
            if call.lifted:
                raise ValueError(f"lora target {call.name!r} runs inside a lifted transform")
            m = call.module
            if isinstance(m, nn.DenseGeneral) and tuple(m.batch_dims):
                raise ValueError(f"lora target {call.name!r} is a DenseGeneral with batch_dims")
            axis = tuple(a % len(call.input_shape) for a in _axis(m))
            found[call.module_path] = Site(
                module_path=call.module_path,
                in_shape=tuple(call.input_shape[a] for a in axis),
                features=_features(m),
                axis=_axis(m),
                general=isinstance(m, nn.DenseGeneral),
                kernel_path=taps.resolve(params, call, "kernel"),
            )
        if not found:
            dense = sorted({c.name for c in calls if c.module_type in _TYPES})
            raise ValueError(f"lora targets {self.targets!r} match no Dense layer of {dense}")
        return tuple(found.values())

    def init(self, key: jax.Array, fn: Callable[..., Any], params: Any, *args: Any) -> dict:
        """Fresh adapters for every matched layer: ``{module path...: {lora_a, lora_b}}``
        (``A`` Gaussian with std ``1/sqrt(fan_in)``, ``B`` zero; float32)."""
        tree: dict[str, Any] = {}
        sites = self.sites(fn, params, *args)
        for site, k in zip(sites, jax.random.split(key, len(sites)), strict=True):
            fan_in = math.prod(site.in_shape)
            a = jax.random.normal(k, (*site.in_shape, self.rank), jnp.float32) / math.sqrt(fan_in)
            b = jnp.zeros((self.rank, *site.features), jnp.float32)
            _nest(tree, site.module_path, {"lora_a": a, "lora_b": b})
        return tree

    # ------------------------------------------------------------------ forward
    def apply(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with adapters: ``wrapped(params, *args)`` takes the base params plus
        ``params["lora"]`` and calls ``fn(base params, *args)`` with every adapted layer's
        output updated (jit, grad and vmap trace through it).

        Raises:
          KeyError: ``params`` has no ``"lora"`` subtree.
          ValueError: an adapter's layer was not called (checked when no other flax
            interceptor is active, i.e. outside the engines' analysis passes).
        """

        def wrapped(params: Any, *args: Any, **kwargs: Any) -> Any:
            if KEY not in params:
                raise KeyError(f"params has no {KEY!r} subtree (LoRA.init makes one)")
            adapters = params[KEY]
            base = {k: v for k, v in params.items() if k != KEY}
            used: set[tuple[str, ...]] = set()

            def interceptor(next_fun: Any, a: Any, kw: Any, context: Any) -> Any:
                out = next_fun(*a, **kw)
                module = context.module
                if type(module) not in _TYPES or context.method_name != "__call__":
                    return out
                path = tuple(str(p) for p in module.scope.path)
                entry = _lookup(adapters, path) if path else None
                if entry is None:
                    return out
                used.add(path)
                return out + self._update(module, entry, a[0]).astype(out.dtype)

            # An outer interceptor (an engine's analysis pass) may run a layer detached,
            # bypassing this one: the check of unused adapters is for plain calls.
            plain = not _outer_interceptors()
            with nn.intercept_methods(interceptor):
                out = fn(base, *args, **kwargs)
            unused = [p for p in _adapter_paths(adapters) if p not in used]
            if unused and plain:
                names = [path_to_str(p) for p in unused]
                raise ValueError(f"lora adapters of layers that were not called: {names}")
            return out

        return wrapped

    def _update(self, module: Any, entry: Mapping[str, Any], x: jax.Array) -> jax.Array:
        """``(x A) * scale`` then ``B``, as two bias-free linear calls the engines tap."""
        dtype = module.dtype
        if isinstance(module, nn.DenseGeneral):
            down = nn.DenseGeneral(self.rank, axis=module.axis, use_bias=False, dtype=dtype)
            up = nn.DenseGeneral(_features(module), axis=-1, use_bias=False, dtype=dtype)
        else:
            down = nn.Dense(self.rank, use_bias=False, dtype=dtype)
            up = nn.Dense(module.features, use_bias=False, dtype=dtype)
        u = down.apply({"params": {"kernel": entry["lora_a"]}}, x)
        return up.apply({"params": {"kernel": entry["lora_b"]}}, u * self.scale)

    # ------------------------------------------------------------------ export
    def merge(self, fn: Callable[..., Any], params: Any, *args: Any) -> Any:
        """The base params with each adapter folded into its kernel (``W + scale A B``):
        ``fn(merge(...), *args)`` equals ``apply(fn)(params, *args)`` without adapters.

        Raises:
          ValueError: an adapter has no matching layer, or its kernel is not a plain leaf
            of the params (found by identity while tracing ``fn``).
        """
        adapters = params[KEY]
        base = {k: v for k, v in params.items() if k != KEY}
        sites = {s.module_path: s for s in self.sites(fn, base, *args)}
        out = base
        for path in _adapter_paths(adapters):
            site = sites.get(path)
            if site is None or site.kernel_path is None:
                raise ValueError(f"cannot merge the adapter of {path_to_str(path)!r}: no kernel")
            entry = _lookup(adapters, path)
            delta = jnp.tensordot(entry["lora_a"], entry["lora_b"], axes=1) * self.scale
            out = _replace(out, site.kernel_path, delta)
        return out


def _outer_interceptors() -> int:
    """How many flax method interceptors are active (0 outside any engine's pass)."""
    from flax.linen import module as linen_module

    return len(getattr(linen_module, "_global_interceptor_stack", ()))


def _adapter_paths(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple]:
    if "lora_a" in tree:
        return [prefix]
    return [p for k, v in tree.items() for p in _adapter_paths(v, (*prefix, str(k)))]


def _replace(tree: Any, path: tuple[str, ...], delta: jax.Array) -> Any:
    """``tree`` with ``delta`` added (in float32) to the leaf at ``path``."""

    def add(kp: Any, leaf: Any) -> Any:
        if _to_path(kp) != tuple(path):
            return leaf
        return (leaf.astype(jnp.float32) + delta.reshape(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(add, tree)


def lora(
    rank: int, alpha: float | None = None, targets: str = r"(query|value)$", dropout: float = 0.0
) -> LoRA:
    """A :class:`LoRA` spec: rank ``rank``, scale ``alpha / rank`` (``alpha`` defaults to
    ``2 * rank``), adapters on the Dense layers whose path ``targets`` finds (default:
    attention queries and values, as in Hu et al. and Yu et al.).

    Example:
        >>> lora(rank=4).scale, lora(rank=4, alpha=4.0).scale
        (2.0, 1.0)
    """
    if alpha is None:
        alpha = 2.0 * rank if isinstance(rank, int) and not isinstance(rank, bool) else 1.0
    return LoRA(rank, float(alpha), targets, dropout)
