"""Layer-family benchmark: Bjorck (Spectral*), AOL and SLL on the reference CNN (issue 10).

Builds, all 1-Lipschitz, with `GroupSort2` and `ScaledL2NormPooling2D(2)` as in
`scripts/tightness.py`:

* ``spectral``: the reference CNN (`SpectralConv2D` 16 and 32, `SpectralDense` 64, 10);
* ``aol``: the same with `AOLConv2D` / `AOLDense`;
* ``aol+sll``: ``aol`` with an `SLLConv2D` residual block after each convolution stage
  (before the pooling) and an `SLLDense` block after the dense 64;
* ``spectral-wide``: ``spectral`` with a Dense 128 (as many trainable parameters as
  ``orthogonal-gnp``: the parameter-matched control);
* ``orthogonal``: the reference CNN with `OrthogonalConv2D` (BCOP, exactly orthogonal
  kernels) in place of `SpectralConv2D`;
* ``orthogonal-gnp``: a gradient-norm-preserving network of the same family:
  `InvertibleDownSampling(4)` (28 x 28 x 1 -> 7 x 7 x 16, a permutation), two
  `OrthogonalConv2D(16, 3, padding="circular")` + `GroupSort2` (orthogonal, no channel
  expansion: their adjoints lose no gradient norm), `SpectralDense` 256 + `GroupSort2`,
  `SpectralDense` 10 (about as many parameters as the reference CNN);
* ``sll-deep``: an SLL-style network (`sll_deep`): AOL stem, 3 `SLLConv2D` blocks at
  14 x 14 x 16, AOL transition, 3 blocks at 7 x 7 x 32, `AOLDense` 64, 2 `SLLDense`
  blocks, `AOLDense` 10.

`MulticlassHKR(alpha=50, min_margin=0.3)`, Adam 1e-3, batch 128, 4,000 real MNIST digits
(1,000 held out), 6 epochs, ``jit_compile=True``, per seed: clean accuracy, certified
accuracy at L2 radii 0.5 / 1.0 / 1.58 (``margin / sqrt 2``), "honest" certified accuracy
at 1.0 (the network constant recomputed as the product of the linear layers' exact
operator norms; an SLL block counts 1: its Jacobian is the identity wherever its units
are inactive, so 1 is its exact constant), the mean gradient norm of
``(f_top1 - f_top2) / sqrt 2`` on the test digits, the median and minimum over 200
correctly classified test digits of (distance of the smallest adversarial example found
by `minimal_adversarial_l2`) / (certified radius) - at least 1 when the certificate
holds, near 1 when it is tight - and seconds per epoch.

Writes ``docs/results/families.md`` and ``families.json``. Runs one model at a time.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tightness import (  # noqa: E402  (scripts/tightness.py: the same settings)
    BATCH_SIZE,
    EPOCHS,
    LEARNING_RATE,
    N_TEST,
    N_TRAIN,
    OUTPUT_DIR,
    RADII,
    EpochTimer,
    exact_norms,
    mean_se,
)

from deel_lip.datasets import load_mnist, train_test_split  # noqa: E402
from deel_lip.layers import (  # noqa: E402
    GroupSort2,
    InvertibleDownSampling,
    OrthogonalConv2D,
    ScaledL2NormPooling2D,
    SpectralConv2D,
    SpectralDense,
)
from deel_lip.layers.aol import AOLConv2D, AOLDense  # noqa: E402
from deel_lip.layers.sll import SLLConv2D, SLLDense  # noqa: E402
from deel_lip.losses import MulticlassHKR  # noqa: E402
from deel_lip.model import Sequential  # noqa: E402
from deel_lip.robustness import (  # noqa: E402
    certified_accuracy,
    certified_radius,
    minimal_adversarial_l2,
)

BUILDS = ("spectral", "spectral-wide", "orthogonal", "orthogonal-gnp", "aol", "aol+sll", "sll-deep")
CONVOLUTIONS = {"spectral": SpectralConv2D, "orthogonal": OrthogonalConv2D}
ATTACKED = 200


def sll_deep() -> Sequential:
    """SLL-style network: AOL stem and transitions, 3 + 3 convolutional and 2 dense SLL
    blocks (16 channels at 14 x 14, 32 channels at 7 x 7)."""
    layers = [keras.Input((28, 28, 1)), AOLConv2D(16, 3), GroupSort2(), ScaledL2NormPooling2D(2)]
    layers += [SLLConv2D(3) for _ in range(3)]
    layers += [AOLConv2D(32, 3), GroupSort2(), ScaledL2NormPooling2D(2)]
    layers += [SLLConv2D(3) for _ in range(3)]
    layers += [keras.layers.Flatten(), AOLDense(64), GroupSort2(), SLLDense(), SLLDense()]
    layers.append(AOLDense(10))
    return Sequential(layers)


def orthogonal_gnp() -> Sequential:
    """Gradient-norm-preserving network: a space-to-depth permutation to 16 channels, then
    circular orthogonal convolutions that keep the width (an expanding layer's adjoint
    projects the gradient: an isometry ``J`` has ``||J^T g|| < ||g||`` off its range)."""
    layers = [keras.Input((28, 28, 1)), InvertibleDownSampling(4)]
    for _ in range(2):
        layers += [OrthogonalConv2D(16, 3, padding="circular"), GroupSort2()]
    layers += [keras.layers.Flatten(), SpectralDense(256), GroupSort2(), SpectralDense(10)]
    return Sequential(layers)


def build(name: str) -> Sequential:
    if name == "sll-deep":
        return sll_deep()
    if name == "orthogonal-gnp":
        return orthogonal_gnp()
    family = name.split("-")[0]
    conv, dense = (
        (CONVOLUTIONS[family], SpectralDense) if family in CONVOLUTIONS else (AOLConv2D, AOLDense)
    )
    units = 128 if name.endswith("-wide") else 64
    sll = name.endswith("+sll")
    layers = [keras.Input((28, 28, 1))]
    for filters in (16, 32):
        layers += [conv(filters, 3), GroupSort2()]
        if sll:
            layers.append(SLLConv2D(3))
        layers.append(ScaledL2NormPooling2D(2))
    layers += [keras.layers.Flatten(), dense(units), GroupSort2()]
    if sll:
        layers.append(SLLDense())
    layers.append(dense(10))
    return Sequential(layers)


def _mean_margin_gradient(model, x) -> float:
    """Mean ``||grad (f_top1 - f_top2)|| / sqrt 2`` over ``x``."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        top2 = tf.math.top_k(model(x, training=False), 2).values
        margin = (top2[:, 0] - top2[:, 1]) / np.sqrt(2.0)
    grads = tape.gradient(margin, x)
    return float(tf.reduce_mean(tf.norm(tf.reshape(grads, (len(grads), -1)), axis=1)))


def attack_over_certificate(model, x, y) -> dict:
    """Median and minimum of (smallest adversarial distance found) / (certified radius)
    over the first `ATTACKED` correctly classified samples with a positive radius."""
    logits = model.predict(x, batch_size=256, verbose=0)
    radius = certified_radius(logits, y, disjoint_neurons=False)
    keep = np.flatnonzero(radius > 0)[:ATTACKED]
    _, distances, found = minimal_adversarial_l2(
        model, x[keep], y[keep], clip_min=0.0, clip_max=1.0, steps=100
    )
    ratios = distances[found] / radius[keep][found]
    return {
        "median": float(np.median(ratios)),
        "min": float(np.min(ratios)),
        "found": int(found.sum()),
        "attacked": len(keep),
    }


def trainable_parameters(model) -> int:
    """Number of trainable weights (the inference caches and states excluded)."""
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def run_one(name, data, seed, epochs) -> dict:
    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    model = build(name)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=MulticlassHKR(alpha=50.0, min_margin=0.3),
        jit_compile=True,
    )
    timer = EpochTimer()
    y = keras.utils.to_categorical(y_train, 10)
    model.fit(x_train, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0, callbacks=[timer])
    logits = model.predict(x_test, batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, -1) == y_test))
    cert = certified_accuracy(model, x_test, y_test, RADII, disjoint_neurons=False)
    norms = exact_norms(model)
    honest = certified_accuracy(
        model, x_test, y_test, (1.0,), lip_const=float(np.prod(norms)), disjoint_neurons=False
    )[1.0]
    row = {
        "build": name,
        "seed": seed,
        "accuracy": accuracy,
        "certified": {str(r): v for r, v in cert.items()},
        "honest_certified_1.0": honest,
        "exact_norm_over_k": norms,
        "mean_gradient_norm": _mean_margin_gradient(model, x_test[:500]),
        "attack_over_certificate": attack_over_certificate(model, x_test, y_test),
        "seconds_per_epoch_xla": float(np.mean(timer.seconds[1:])),
        "parameters": int(model.count_params()),
        "trainable_parameters": trainable_parameters(model),
    }
    print(json.dumps(row), flush=True)
    return row


def markdown(rows, settings) -> str:
    lines = [
        "<!-- generated by scripts/families_bench.py: do not edit by hand -->",
        "",
        "| build | accuracy | certified r = 0.5 | r = 1.0 | r = 1.58 | honest r = 1.0 "
        "| product of exact norms | mean gradient norm | attack / certificate: median (min) "
        "| s / epoch (XLA) | trainable parameters |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in BUILDS:
        rs = [r for r in rows if r["build"] == name]
        if not rs:
            continue
        cells = [mean_se([r["accuracy"] for r in rs])]
        cells += [mean_se([r["certified"][str(x)] for r in rs]) for x in RADII]
        cells.append(mean_se([r["honest_certified_1.0"] for r in rs]))
        cells.append(mean_se([np.prod(r["exact_norm_over_k"]) for r in rs]))
        cells.append(mean_se([r["mean_gradient_norm"] for r in rs]))
        attack = [r["attack_over_certificate"] for r in rs]
        low = min(a["min"] for a in attack)
        cells.append(f"{mean_se([a['median'] for a in attack])} ({low:.2f})")
        cells.append(f"{np.mean([r['seconds_per_epoch_xla'] for r in rs]):.2f}")
        cells.append(f"{rs[0]['trainable_parameters']:,}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    s = settings
    lines += [
        "",
        f"Mean +- standard error over seeds {s['seeds']}. `MulticlassHKR(alpha=50, "
        f"min_margin=0.3)`, Adam {LEARNING_RATE}, batch {BATCH_SIZE}, {s['epochs']} epochs, "
        f"`jit_compile=True`, {N_TRAIN:,} train / {N_TEST:,} test MNIST digits. Certified: "
        "correct with `margin / sqrt(2) > r`. Honest: the same with the product of the linear "
        "layers' exact operator norms as the network constant (SLL blocks count 1). Mean "
        "gradient norm: of `(f_top1 - f_top2) / sqrt 2` on 500 test digits (1 for a "
        "gradient-norm-preserving network). Attack / certificate: distance of the smallest "
        f"adversarial example found (`minimal_adversarial_l2`, 100 steps, inputs in [0, 1]) "
        f"over the certified radius, on {ATTACKED} correctly classified test digits: median, "
        "and in brackets the minimum over seeds (>= 1: no certificate broken).",
        "",
        f"Generated on {s['date']} by `scripts/families_bench.py` in "
        f"{s['total_seconds']:.0f} s on {os.cpu_count()} CPU cores (shared).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--builds", nargs="+", default=list(BUILDS), choices=BUILDS)
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR)
    parser.add_argument(
        "--markdown-only",
        action="store_true",
        help="re-render families.md from families.json (no training)",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="train only --builds and replace their rows in the saved families.json",
    )
    args = parser.parse_args(argv)
    if args.append:  # train --builds, keep the saved rows of the other builds
        saved = json.loads((args.output_dir / "families.json").read_text())
        images, labels = load_mnist()
        x_train, y_train, x_test, y_test = train_test_split(images, labels, N_TEST, seed=0)
        data = (x_train[:N_TRAIN], y_train[:N_TRAIN], x_test, y_test)
        new = [run_one(b, data, seed, args.epochs) for seed in args.seeds for b in args.builds]
        saved["rows"] = [r for r in saved["rows"] if r["build"] not in args.builds] + new
        (args.output_dir / "families.json").write_text(json.dumps(saved, indent=2) + "\n")
        args.markdown_only = True
    if args.markdown_only:
        saved = json.loads((args.output_dir / "families.json").read_text())
        for row in saved["rows"]:
            row.setdefault("trainable_parameters", trainable_parameters(build(row["build"])))
        (args.output_dir / "families.md").write_text(markdown(saved["rows"], saved["settings"]))
        (args.output_dir / "families.json").write_text(json.dumps(saved, indent=2) + "\n")
        return 0
    start = time.perf_counter()
    images, labels = load_mnist()
    x_train, y_train, x_test, y_test = train_test_split(images, labels, N_TEST, seed=0)
    data = (x_train[:N_TRAIN], y_train[:N_TRAIN], x_test, y_test)
    rows = [run_one(b, data, seed, args.epochs) for seed in args.seeds for b in args.builds]
    settings = {
        "seeds": args.seeds,
        "epochs": args.epochs,
        "date": datetime.date.today().isoformat(),
        "total_seconds": time.perf_counter() - start,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "families.md").write_text(markdown(rows, settings))
    (args.output_dir / "families.json").write_text(
        json.dumps({"rows": rows, "settings": settings}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
