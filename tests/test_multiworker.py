"""Training on two machines equals training on one: MultiWorkerMirroredStrategy.

Two worker processes form a `tf.distribute.MultiWorkerMirroredStrategy` cluster over
loopback (``TF_CONFIG`` with 127.0.0.1 ports free at run time), a third process trains
on one device; all run `tests/multiworker_worker.py` on the same global batches of real
digits. The per-step losses and final weights must agree within float tolerance, with
the losses' cross-replica statistics (the class means of `MulticlassHKR`, the running
mean of `MulticlassSoftHKR`) computed over the global batch.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("multiworker_worker.py")
DEADLINE = 400.0  # seconds for the three processes together


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 (held open together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_processes(commands: list[tuple[list[str], dict]], deadline: float) -> list[tuple]:
    """Run the commands concurrently; ``(returncode, stderr tail)`` of each.

    Every process still running at the deadline (or if anything fails here) is killed.
    """
    procs = []
    try:
        for args, env in commands:
            procs.append(
                subprocess.Popen(
                    args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
                )
            )
        end = time.monotonic() + deadline
        results = []
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=max(1.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
                err = f"killed after {deadline} s\n{err}"
            results.append((proc.returncode, err[-3000:]))
            if proc.returncode != 0:  # a dead worker leaves its peer waiting
                for other in procs:
                    if other.poll() is None:
                        other.kill()
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_two_workers_on_loopback_match_one_device(tmp_path):
    ports = free_loopback_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    base_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    base_env.pop("TF_CONFIG", None)
    commands = []
    for index in range(2):
        env = dict(
            base_env,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        commands.append(([sys.executable, str(WORKER), str(tmp_path / f"worker{index}.npz")], env))
    commands.append(([sys.executable, str(WORKER), str(tmp_path / "single.npz")], base_env))

    start = time.monotonic()
    results = run_processes(commands, DEADLINE)
    elapsed = time.monotonic() - start
    for code, err in results:
        assert code == 0, err

    single = np.load(tmp_path / "single.npz")
    workers = [np.load(tmp_path / f"worker{i}.npz") for i in range(2)]
    assert int(single["replicas"]) == 1
    assert [int(w["replicas"]) for w in workers] == [2, 2]
    assert sorted(int(w["task"]) for w in workers) == [0, 1]
    report = {
        "seconds": round(elapsed, 1),
        "cpu_seconds": [round(float(r["cpu_seconds"]), 1) for r in (*workers, single)],
    }
    for name in ("hkr", "soft"):
        count = len([key for key in single.files if key.startswith(f"{name}_weight")])
        assert count >= 6  # kernels, biases, power-iteration vectors, cached kernels
        final = [single[f"{name}_weight{i}"] for i in range(count)]
        reference = single[f"{name}_loss"]
        assert reference.shape == (6,) and np.all(np.isfinite(reference)), reference
        # training moved the weights, and per-worker statistics would change the loss
        moved = max(float(np.abs(w - single[f"{name}_init{i}"]).max()) for i, w in enumerate(final))
        assert moved > 1e-3, (name, moved)
        report[f"{name}_per_worker_statistics_gap"] = float(single[f"{name}_gap"])
        assert float(single[f"{name}_gap"]) > 1e-3, (name, report)
        for worker in workers:
            task = int(worker["task"])
            loss_diff = float(np.abs(worker[f"{name}_loss"] - reference).max())
            weight_diff = max(
                float(np.abs(worker[f"{name}_weight{i}"] - w).max()) for i, w in enumerate(final)
            )
            report[f"{name}_loss_diff_worker{task}"] = loss_diff
            report[f"{name}_weight_diff_worker{task}"] = weight_diff
            assert loss_diff <= 1e-5 * max(1.0, float(np.abs(reference).max())), (name, report)
            assert weight_diff <= 1e-5 * max(1.0, moved), (name, report)
            if name == "soft":
                mean_diff = abs(float(worker["soft_mean"]) - float(single["soft_mean"]))
                report[f"soft_mean_diff_worker{task}"] = mean_diff
                assert mean_diff <= 1e-6, report
    print(report)
