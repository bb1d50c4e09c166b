"""Where a deel_lip training step spends its time (issue 9): milliseconds per step.

The small reference CNN of `benchmarks.models` (batch 128 of real MNIST digits, hinge-KR,
Adam), with and without XLA. Every variant is one ``tf.function`` (forward, loss,
gradient, optimizer update), timed in the same process, alternating, median over rounds:

* ``deel_lip``: the library's model (normalisation recomputed every step);
* ``twin``: the same architecture with plain ``Conv2D`` / ``Dense`` kernels (the
  constraint removed, GroupSort2 and L2-norm pooling kept);
* ``twin relu+avg``: the twin with ReLU and average pooling (the activations and
  poolings' cost is ``twin - twin relu+avg``);
* ``normalisation``: forward + backward of each constrained layer's kernel map alone,
  split for the convolutions into Bjorck (``SpectralKernel._normalize``) and the frequency
  bound (``conv_frequency_bound_with_padding`` on the Bjorck output);
* ``loss``: hinge-KR forward + backward on the logits alone.

``rest`` = deel_lip - twin - normalisation: the cache / flag writes and the normalisation's
chain into the step. Run: ``python -m scripts.profile_step [--rounds 15] [--steps 10]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.models import lipschitz_model, unconstrained_model  # noqa: E402
from benchmarks.training import benchmark_data, lipschitz_loss  # noqa: E402
from deel_lip.layers import ConstrainedKernel, GroupSort2, ScaledL2NormPooling2D  # noqa: E402
from deel_lip.layers._conv_bound import ConvBound  # noqa: E402
from deel_lip.layers.normalized import SpectralKernel  # noqa: E402


def _relu_avg_twin() -> keras.Model:
    """The unconstrained twin with ReLU and average pooling (same kernels, same loss)."""
    twin = unconstrained_model("small")
    layers = [keras.Input((28, 28, 1))]
    for layer in twin.layers:
        if isinstance(layer, GroupSort2):
            layers.append(keras.layers.ReLU())
        elif isinstance(layer, ScaledL2NormPooling2D):
            layers.append(keras.layers.AveragePooling2D(2))
        else:
            layers.append(layer.__class__.from_config(layer.get_config()))
    return keras.Sequential(layers)


def _train_step(model, jit: bool):
    loss_fn = lipschitz_loss()
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def _kernel_step(fn, variable, jit: bool):
    """Forward + backward of ``sum(fn(v) * c)`` w.r.t. the variable ``v``."""
    weights = tf.constant(np.random.default_rng(0).standard_normal(variable.shape), "float32")

    @tf.function(jit_compile=jit)
    def step():
        with tf.GradientTape() as tape:
            out = fn(tf.convert_to_tensor(variable))
            value = tf.reduce_sum(out * weights) if out.shape.rank else out
        return tape.gradient(value, variable)

    return step


def _loss_step(jit: bool):
    loss_fn = lipschitz_loss()
    rng = np.random.default_rng(0)
    logits = tf.Variable(rng.standard_normal((128, 10)).astype("float32"))
    labels = tf.constant(keras.utils.to_categorical(rng.integers(0, 10, 128), 10))

    @tf.function(jit_compile=jit)
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, logits)
        return tape.gradient(loss, logits)

    return step


def _normalisation_steps(model, jit: bool) -> dict:
    """``{name: step}``: each constrained layer's kernel map, the conv ones split."""
    steps = {}
    for layer in model.layers:
        if not isinstance(layer, ConstrainedKernel):
            continue
        raw = layer._raw_kernel()
        state = {n: tf.convert_to_tensor(v) for n, v in layer._state.items()}

        def full(k, layer=layer, state=state):
            return layer._normalize(k, state)[0]

        steps[f"norm {layer.name} (all)"] = _kernel_step(full, raw, jit)
        if isinstance(layer, ConvBound) and layer.conv_bound == "frequency":

            def bjorck(k, layer=layer, state=state):
                return SpectralKernel._normalize(layer, k, state)[0]

            orth = tf.Variable(bjorck(tf.convert_to_tensor(raw)))
            steps[f"norm {layer.name} bjorck"] = _kernel_step(bjorck, raw, jit)
            steps[f"norm {layer.name} freq bound"] = _kernel_step(layer._frequency_bound, orth, jit)
    return steps


def _time(steps: dict, rounds: int, n: int) -> dict:
    for step in steps.values():  # trace, compile, warm up
        for _ in range(3):
            tf.nest.map_structure(np.asarray, step())
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(n):
                out = step()
            tf.nest.map_structure(np.asarray, out)
            times[name].append((time.perf_counter() - start) / n * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def profile(rounds: int = 15, n: int = 10, jit_modes=(True, False)) -> dict:
    keras.utils.set_random_seed(0)
    x, y, _, _ = benchmark_data("small")
    x = tf.constant(x[:128])
    y = tf.constant(keras.utils.to_categorical(y[:128], 10))
    steps = {}
    for jit in jit_modes:
        tag = "xla" if jit else "no-xla"
        models = {
            "deel_lip": lipschitz_model("small"),
            "twin": unconstrained_model("small"),
            "twin relu+avg": _relu_avg_twin(),
        }
        for name, model in models.items():
            step = _train_step(model, jit)
            steps[f"{tag} step {name}"] = lambda step=step: step(x, y)
        steps[f"{tag} loss"] = _loss_step(jit)
        for name, step in _normalisation_steps(models["deel_lip"], jit).items():
            steps[f"{tag} {name}"] = step
    return _time(steps, rounds, n)


def breakdown(ms: dict, tag: str) -> dict:
    """Breakdown of the deel_lip step (ms): normalisation (Bjorck / bound), activations and
    poolings, loss, rest."""
    get = {k[len(tag) + 1 :]: v for k, v in ms.items() if k.startswith(tag + " ")}
    bjorck = sum(v for k, v in get.items() if k.endswith("bjorck"))
    bound = sum(v for k, v in get.items() if k.endswith("freq bound"))
    dense = sum(v for k, v in get.items() if k.endswith("(all)") and "conv" not in k.split()[1])
    normalisation = sum(v for k, v in get.items() if k.endswith("(all)"))
    act_pool = get["step twin"] - get["step twin relu+avg"]
    return {
        "step deel_lip": get["step deel_lip"],
        "step twin": get["step twin"],
        "normalisation (all layers)": normalisation,
        "  conv Bjorck": bjorck,
        "  conv frequency bound": bound,
        "  dense Bjorck": dense,
        "activations+pooling (twin - relu/avg twin)": act_pool,
        "loss (fwd+bwd)": get["loss"],
        "rest of twin (convs, dense, Adam)": get["step twin"] - act_pool - get["loss"],
        "deel_lip - twin - normalisation": get["step deel_lip"] - get["step twin"] - normalisation,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-xla-only", action="store_true")
    parser.add_argument("--xla-only", action="store_true")
    args = parser.parse_args()
    modes = (True,) if args.xla_only else (False,) if args.no_xla_only else (True, False)
    ms = profile(args.rounds, args.steps, modes)
    for name, value in ms.items():
        print(f"{name:45s} {value:8.2f} ms")
    print()
    tags = [t for t, j in (("xla", True), ("no-xla", False)) if j in modes]
    table = {tag: breakdown(ms, tag) for tag in tags}
    print("| ms per step | " + " | ".join(tags) + " |")
    print("|---|" + "---|" * len(tags))
    for row in table[tags[0]]:
        print(f"| {row} | " + " | ".join(f"{table[t][row]:.2f}" for t in tags) + " |")


if __name__ == "__main__":
    main()
