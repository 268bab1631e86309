"""The oracle for accounting tests: dp_accounting's own accountants fed the events."""

import dp_accounting as dpa
from dp_accounting import pld, rdp

from dpjax import accounting

N_SST2 = 67349
Q_SST2 = 1024 / N_SST2
REL = dpa.NeighboringRelation


def oracle_epsilon(events, delta, accountant, relation=REL.ADD_OR_REMOVE_ONE, grid=1e-4):
    """epsilon from dp_accounting composing ``events`` directly."""
    if accountant == "pld":
        acc = pld.PLDAccountant(value_discretization_interval=grid)
    else:
        acc = rdp.RdpAccountant(orders=list(accounting.RDP_ORDERS), neighboring_relation=relation)
    for e in events:
        acc.compose(e)
    return acc.get_epsilon(delta)


def poisson_event(sigma, q, steps):
    return dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)


def without_replacement_event(sigma, n, m, steps):
    """``steps`` fixed-size steps whose noise std is ``sigma * C`` for clip norm ``C``.

    Under replace-one neighbours the clipped sum moves by up to ``2 C``, and dp_accounting's
    RDP formulas want the std relative to that sensitivity: ``sigma / 2``
    (google/differential-privacy issue 378).
    """
    inner = dpa.SampledWithoutReplacementDpEvent(n, m, dpa.GaussianDpEvent(sigma / 2))
    return dpa.SelfComposedDpEvent(inner, steps)
