"""Device mesh ``("data", "model")`` and placing parameters and batches on it.

* Batches are sharded on ``"data"`` (their leading axis); every host contributes only
  its own slice of each micro-batch (:func:`global_batch`).
* Parameters (and the optimizer state, placed by the same function) are replicated, or
  with ``fsdp=True`` FSDP/ZeRO-sharded on ``"data"`` (:func:`param_shardings`, the
  big_vision / levanter convention): each leaf of at least :data:`FSDP_MIN_SIZE`
  elements is split on its largest axis divisible by the data-axis size; smaller or
  non-divisible leaves stay replicated. When the mesh has ``model`` > 1, the largest
  remaining axis divisible by its size is also split on ``"model"`` (tensor parallel).
  XLA gathers a sharded leaf where a computation needs it whole.
* The vmap engine is called with ``spmd_axis_name="data"``, so its per-example axis is
  partitioned like the batch and per-example gradients are never gathered.

Example:
    >>> mesh = make_mesh(MeshSettings(data=-1, model=1))
    >>> mesh.axis_names
    ('data', 'model')
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dpjax.training.settings import ConfigError, MeshSettings

__all__ = [
    "DATA",
    "FSDP_MIN_SIZE",
    "MODEL",
    "batch_sharding",
    "global_batch",
    "make_mesh",
    "param_shardings",
    "place",
    "replicated",
    "to_host",
]

#: The mesh axis names: batches are split over ``DATA``, large layers over ``MODEL``.
DATA, MODEL = "data", "model"


def make_mesh(settings: MeshSettings, devices: list[Any] | None = None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default: all, in process order)."""
    devices = list(jax.devices() if devices is None else devices)
    model = settings.model
    data = len(devices) // model if settings.data == -1 else settings.data
    if data < 1 or data * model != len(devices):
        raise ConfigError(
            f"config.mesh data={settings.data} x model={model} does not match the "
            f"{len(devices)} available devices"
        )
    return Mesh(np.asarray(devices).reshape(data, model), (DATA, MODEL))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of an array copied on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch leaf: leading axis on ``"data"``."""
    return NamedSharding(mesh, P(DATA))


#: Leaves with fewer elements (biases, norm scales, small kernels: 64 KiB in float32) are
#: replicated under FSDP: splitting them saves little memory and costs a gather each use.
FSDP_MIN_SIZE = 2**14


def _split_axis(shape: tuple[int, ...], size: int, taken: int | None) -> int | None:
    """The largest axis (first on ties) divisible by ``size``, other than ``taken``."""
    order = sorted(range(len(shape)), key=lambda a: -shape[a])
    return next((a for a in order if a != taken and shape[a] % size == 0), None)


def _fsdp_spec(shape: tuple[int, ...], data: int, model: int, min_size: int) -> P:
    if not shape or int(np.prod(shape)) < min_size:
        return P()
    spec: list[str | None] = [None] * len(shape)
    fsdp_axis = _split_axis(shape, data, None) if data > 1 else None
    if fsdp_axis is not None:
        spec[fsdp_axis] = DATA
    tensor_axis = _split_axis(shape, model, fsdp_axis) if model > 1 else None
    if tensor_axis is not None:
        spec[tensor_axis] = MODEL
    return P(*spec) if any(spec) else P()


def param_shardings(
    mesh: Mesh, tree: Any, fsdp: bool = False, *, min_size: int = FSDP_MIN_SIZE
) -> Any:
    """A tree of :class:`NamedSharding` like ``tree`` (``None`` leaves stay ``None``).

    Replicated unless ``fsdp``; with ``fsdp`` each leaf of at least ``min_size`` elements
    is split on ``"data"`` along its largest axis divisible by the data-axis size (and,
    when ``model`` > 1, on ``"model"`` along the largest other axis divisible by that).
    """
    data, model = mesh.shape[DATA], mesh.shape[MODEL]

    def one(x: Any) -> NamedSharding:
        spec = _fsdp_spec(np.shape(x), data, model, min_size) if fsdp else P()
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, tree)


def place(tree: Any, shardings: Any) -> Any:
    """Puts host values (identical on every process) onto the mesh as global arrays."""

    def one(x: Any, s: NamedSharding) -> jax.Array:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.device_put(x, s)
        if isinstance(x, jax.Array) and x.is_fully_addressable:
            x = np.asarray(x)
        elif isinstance(x, jax.Array):
            return jax.device_put(x, s)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(one, tree, shardings)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, global_rows: int) -> dict[str, Any]:
    """Assembles the global micro-batch from this process's contiguous slice of rows."""
    sharding = batch_sharding(mesh)
    out = {}
    for name, x in local.items():
        x = np.asarray(x)
        shape = (global_rows,) + x.shape[1:]
        out[name] = jax.make_array_from_process_local_data(sharding, x, shape)
    return out


def to_host(x: Any) -> np.ndarray:
    """A host numpy copy of a (fully replicated, or fully addressable) array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            raise ValueError("to_host needs a fully replicated array in multi-process runs")
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)
