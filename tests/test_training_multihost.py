"""Two processes on localhost (``jax.distributed``, 4 CPU devices each) == one process of 8."""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dpjax.training import Checkpointer, Trainer, fingerprint
from experiments.configs import toy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [
    "--config=experiments/configs/toy.py:dp_full",
    "--config.steps=3",
    "--config.physical_batch_size=32",
    "--config.privacy.target_epsilon=4.0",
    "--config.privacy.accountant=rdp",
    "--config.eval_every=2",
    "--config.privacy.noise_seed=11",  # the 1- and 2-process runs must share their streams
    "--noprogress",
]


def _env(devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _popen(args, devices):
    """``python *args`` from the repository root on ``devices`` CPU devices, output piped."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _start(workdir, devices, extra=()):
    return _popen(["-m", "experiments.train", f"--workdir={workdir}", *ARGS, *extra], devices)


def _communicate(procs, timeout):
    """Every process's (stdout, stderr), or None for those still running at the deadline.

    One deadline for all: a process that waits on a hung peer is killed with it, and each
    process's own output is kept for the failure message.
    """
    deadline = time.monotonic() + timeout
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            outs.append(None)
    for i, p in enumerate(procs):
        if outs[i] is None:
            p.kill()
            out, err = p.communicate()
            outs[i] = (out, f"[killed after {timeout} s]\n{err}")
    return outs


def _wait(procs, timeout=300):
    outs = _communicate(procs, timeout)
    for i, (p, (_, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} of {len(procs)}:\n{err[-4000:]}"


#: FSDP over the 8 devices of both processes, DP full with ghost clipping; the toy's
#: hidden layer widened so its [32, 1024] kernel is sharded (FSDP_MIN_SIZE).
FSDP = ["--config.mesh.fsdp=True", "--config.engine=ghost", "--config.task.dim=32",
        "--config.task.hidden=1024"]  # fmt: skip


def _task_config(fsdp):
    task = toy.get_config("dp_full").task
    if fsdp:
        task.dim, task.hidden = 32, 1024
    return task


def _final_params(workdir, results, fsdp=False):
    results["config"]["privacy"]["noise_seed"] = 11  # results.json shows only a note
    cfg = toy.get_config("dp_full")
    cfg.task = _task_config(fsdp)
    trainer = Trainer(cfg, "/unused", task=toy.build_task(cfg.task), devices=jax.devices()[:1])
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=2, fingerprint=fingerprint(results["config"])
    )
    state, meta = ckpt.restore(trainer.initial_state(0))
    assert meta["step"] == 3
    return jax.device_get(state.params)


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["replicated", "fsdp"])
def test_two_process_run_equals_one_process_run(tmp_path, fsdp):
    one, two = tmp_path / "one", tmp_path / "two"
    port = _free_port()
    extra = FSDP if fsdp else []
    multi = [
        "--num_processes=2",
        f"--coordinator_address=127.0.0.1:{port}",
        *extra,
    ]
    procs = [_start(two, 4, [*multi, f"--process_id={i}"]) for i in range(2)]
    _wait(procs)
    _wait([_start(one, 8, extra)])
    r1 = json.loads((one / "results.json").read_text())
    r2 = json.loads((two / "results.json").read_text())
    assert r2["devices"] == {"mesh": {"data": 8, "model": 1}, "processes": 2}
    assert r1["devices"]["processes"] == 1
    assert r1["steps"] == r2["steps"] == 3
    assert r1["epsilon"] == r2["epsilon"] and r1["noise_multiplier"] == r2["noise_multiplier"]
    for k, v in r1["eval"].items():
        assert r2["eval"][k] == pytest.approx(v, rel=1e-5, abs=1e-6)
    p1, p2 = _final_params(str(one), r1, fsdp), _final_params(str(two), r2, fsdp)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p1, p2)
    moved = jax.tree.map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
        p1,
        jax.device_get(toy.build_task(_task_config(fsdp)).params),
    )
    assert max(jax.tree.leaves(moved)) > 1e-4


BROADCAST = """
import faulthandler, hashlib, sys, jax
faulthandler.dump_traceback_later(60, exit=True)  # a hang fails fast, with its stack
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from dpjax.randomness import RunSecrets
s = RunSecrets.draw().broadcast()
with open(sys.argv[3], "w") as f:  # a file: the collectives' logs share stdout
    f.write(f"{hashlib.sha256(str(s.root).encode()).hexdigest()} {s.user_supplied}")
jax.distributed.shutdown()
"""


def _broadcast_run(script, files):
    """Both processes of one run; their return codes and stderr."""
    address = f"127.0.0.1:{_free_port()}"
    procs = [_popen([str(script), address, str(i), str(files[i])], 2) for i in range(2)]
    outs = _communicate(procs, timeout=120)
    return [p.returncode for p in procs], [o[1][-3000:] for o in outs]


@pytest.mark.slow
def test_every_process_gets_process_0s_secret(tmp_path):
    """Each process draws its own OS entropy; broadcast() gives all of them process 0's.

    A run whose processes fail to finish (JAX's coordination service on a loaded two-core
    CI machine once hung for 120 s after Gloo connected) is tried once more on a fresh
    port; a second failure fails the test with both processes' stderr. A wrong broadcast
    is not retried: it shows as different digests, not as a hang.
    """
    script = tmp_path / "broadcast.py"
    script.write_text(BROADCAST)
    digests = []
    for run in range(2):
        for attempt in range(2):
            files = [tmp_path / f"run{run}_try{attempt}_process{i}.txt" for i in range(2)]
            codes, errs = _broadcast_run(script, files)
            if codes == [0, 0]:
                break
        assert codes == [0, 0], (codes, errs)
        lines = [f.read_text() for f in files]
        assert lines[0] == lines[1] and lines[0].endswith("False")
        digests.append(lines[0])
    assert digests[0] != digests[1]  # a fresh secret per run
