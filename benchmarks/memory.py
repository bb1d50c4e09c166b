"""Peak training memory of one model, measured in a fresh process.

``python -m benchmarks.memory ARCH {deel_lip,plain} EPOCHS`` builds and compiles the model,
runs one predict to load the runtime, records the peak resident set size, trains, and
prints the growth of the peak (kB) as JSON. The growth is what training adds on top of
the TensorFlow runtime and the data, so the two models compare on what differs.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(arch: str, which: str, epochs: int, n_train: int) -> dict:
    import keras

    from benchmarks.training import benchmark_data, compiled_pair

    x_train, y_train, x_test, _ = benchmark_data(arch, n_train=n_train)
    lip, plain = compiled_pair(arch)
    model = lip if which == "deel_lip" else plain
    del lip, plain
    model.predict(x_test[:256], verbose=0)
    before = _peak_kb()
    y = keras.utils.to_categorical(y_train, 10)
    model.fit(x_train, y, batch_size=128, epochs=epochs, verbose=0)
    after = _peak_kb()
    return {"peak_kb_before": before, "peak_kb_after": after, "training_kb": after - before}


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
