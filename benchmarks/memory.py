"""Peak training memory of one model, measured in a fresh process.

``python -m benchmarks.memory ARCH BUILD EPOCHS N_TRAIN`` (BUILD a name of
`benchmarks.training.BUILDS`) builds
and compiles the model, runs one predict to load the runtime, then trains while a thread
samples the resident set size (``/proc/self/statm``, every 2 ms), and prints as JSON the
peak growth over the size before training (kB), overall (``training_kb``, the first epoch
included: tracing and XLA compilation) and in steady state (``steady_state_kb``, over the
size after a first epoch): what training adds on top of the TensorFlow runtime and the
data, so the models compare on what differs. (The process's
``ru_maxrss`` cannot tell: loading the runtime peaks higher than training.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _rss_kb() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_KB


class _PeakSampler(threading.Thread):
    """Samples the resident set size until stopped; ``peak_kb`` is the largest seen."""

    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_kb = _rss_kb()
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.wait(self.interval):
            self.peak_kb = max(self.peak_kb, _rss_kb())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak_kb, _rss_kb())


def measure(arch: str, which: str, epochs: int, n_train: int) -> dict:
    import keras

    from benchmarks.training import benchmark_data, compiled_models

    x_train, y_train, x_test, _ = benchmark_data(arch, n_train=n_train)
    model = compiled_models(arch, (which,))[which]
    model.predict(x_test[:256], verbose=0)
    y = keras.utils.to_categorical(y_train, 10)
    before = _rss_kb()
    sampler = _PeakSampler()
    sampler.start()
    model.fit(x_train, y, batch_size=128, epochs=1, verbose=0)  # traces and compiles
    first_peak = sampler.stop()
    steady_before = _rss_kb()
    sampler = _PeakSampler()
    sampler.start()
    model.fit(x_train, y, batch_size=128, epochs=epochs, verbose=0)
    steady_peak = sampler.stop()
    return {
        "rss_kb_before": before,
        "first_epoch_kb": first_peak - before,
        "training_kb": max(first_peak, steady_peak) - before,
        "peak_rss_kb": max(first_peak, steady_peak),
        "steady_state_kb": steady_peak - steady_before,
    }


def measure_in_subprocess(arch: str, which: str, epochs: int = 2, n_train: int = 4000) -> dict:
    """Run `measure` in a new interpreter (peak RSS is per process)."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", arch, which, str(epochs), str(n_train)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    arch_arg, which_arg, epochs_arg, n_train_arg = sys.argv[1:5]
    print(json.dumps(measure(arch_arg, which_arg, int(epochs_arg), int(n_train_arg))))
