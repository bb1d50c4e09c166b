"""Feature visualisation (MACO) and CRAFT concepts of an OTNN and a CNN, measured on MNIST.

For each seed (a new split of training randomness, new MACO phases and crops):

1. An OTNN (`lipschitz_cnn`: `SpectralConv2D` + `GroupSort2` + `ScaledL2NormPooling2D`,
   `MulticlassHKR`) and a CNN of the same layout (ReLU, max pooling, cross-entropy)
   trained on 4,000 real MNIST digits; the CNN epoch by epoch until it reaches the
   OTNN's test accuracy.
2. MACO (`deel_lip.xai.feature_visualization`, 28-pixel canvas, magnitude spectrum of 500
   training digits) on each of the 10 logits: success = the image ranks its class first.
3. CRAFT (`deel_lip.xai.LipschitzCraft`, cut after the second pooling layer, non-negative
   in both models) for classes 3 and 8: relative NMF reconstruction error, Sobol
   importances, and concept deletion / insertion areas (`concept_fidelity`) on 50 test
   digits of the class, with random concept orders as the baseline.

Then an RGB case (32x32 crops of scikit-learn's two sample photos, "china" vs "flower",
small OTNN and CNN, MACO on both logits with Xplique's ImageNet spectrum) and the
randomisation check (Xplique's `ProgressiveLayerRandomization` versus
`LipschitzLayerRandomization` on the OTNN: exact largest singular value per layer).

Writes ``docs/results/xai_features_concepts.json``, ``xai_features.md``,
``xai_concepts.md`` and ``xai_features_*.png`` / ``xai_concepts_*.png``. Whatever comes
out is reported as is. About 10-15 minutes on 2 loaded CPU cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from mnist_cnn import lipschitz_cnn  # noqa: E402

from deel_lip.datasets import load_mnist, train_test_split  # noqa: E402
from deel_lip.layers import GroupSort2, ScaledL2NormPooling2D, SpectralConv2D, SpectralDense  # noqa: E402
from deel_lip.losses import MulticlassHKR  # noqa: E402
from deel_lip.model import Sequential  # noqa: E402
from deel_lip.xai.concepts import LipschitzCraft, concept_fidelity  # noqa: E402
from deel_lip.xai.features import feature_visualization, plot_feature_visualizations  # noqa: E402
from deel_lip.xai.randomization import LipschitzLayerRandomization, lipschitz_bounds  # noqa: E402

warnings.filterwarnings("ignore")
OUT = Path("docs/results")
CRAFT_CLASSES = (3, 8)


def cnn(input_shape=(28, 28, 1), classes=10, width=(16, 32, 64)) -> keras.Sequential:
    """The OTNN's layout without constraints: ReLU, max pooling, plain Conv2D / Dense."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(width[0], 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(width[1], 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(width[2], activation="relu"),
            keras.layers.Dense(classes),
        ],
        name="cnn",
    )


def small_otnn(input_shape, classes) -> Sequential:
    return Sequential(
        [
            keras.Input(input_shape),
            SpectralConv2D(16, 3),
            GroupSort2(),
            ScaledL2NormPooling2D(2),
            SpectralConv2D(32, 3),
            GroupSort2(),
            ScaledL2NormPooling2D(2),
            keras.layers.Flatten(),
            SpectralDense(32),
            GroupSort2(),
            SpectralDense(classes),
        ],
        name="otnn",
    )


def accuracy(model, x, y) -> float:
    return float(np.mean(model.predict(x, batch_size=256, verbose=0).argmax(1) == y))


def train_pair(otnn, cnn_model, data, otnn_epochs, cnn_max_epochs):
    x_train, y_train, x_test, y_test = data
    classes = int(otnn.outputs[0].shape[-1])
    one_hot = keras.utils.to_categorical(y_train, classes)
    otnn.compile(keras.optimizers.Adam(2e-3), MulticlassHKR(alpha=0.98, min_margin=1.0))
    otnn.fit(x_train, one_hot, batch_size=64, epochs=otnn_epochs, verbose=0)
    otnn_acc = accuracy(otnn, x_test, y_test)
    cnn_model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.CategoricalCrossentropy(from_logits=True)
    )
    cnn_acc, epochs = 0.0, 0
    while cnn_acc < otnn_acc and epochs < cnn_max_epochs:
        cnn_model.fit(x_train, one_hot, batch_size=64, epochs=1, verbose=0)
        epochs += 1
        cnn_acc = accuracy(cnn_model, x_test, y_test)
    return {"OTNN": otnn_acc, "CNN": cnn_acc, "cnn_epochs": epochs}


def mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, dtype="float64")
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(values.mean()), se


def run_maco(model, classes, seed, steps, crops, reference=None):
    results = []
    for c in classes:
        results.append(
            feature_visualization(
                model,
                c,
                reference_images=reference,
                nb_steps=steps,
                nb_crops=crops,
                seed=1000 * seed + c,
            )
        )
    return results


def run_craft(model, x_train, y_train, x_test, y_test, class_id, concepts, design):
    craft = LipschitzCraft(model, number_of_concepts=concepts, patch_size=14)
    craft.fit(x_train[y_train == class_id][:200], class_id)
    craft.estimate_importance(nb_design=design)
    fidelity = concept_fidelity(craft, x_test[y_test == class_id][:50])
    fidelity["reconstruction_error"] = craft.reconstruction_error()
    fidelity["layer"] = craft.split.layer
    fidelity["lifted"] = craft.split.lifted
    return craft, fidelity


def rgb_data(seed: int, n_per_class=600, size=32):
    """Random 32x32 crops of scikit-learn's two sample photos, labelled by photo."""
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(image, dtype="float32") / 255.0 for image in load_sample_images().images]
    rng = np.random.default_rng(seed)
    x, y = [], []
    for label, photo in enumerate(photos):
        for _ in range(n_per_class):
            i = rng.integers(photo.shape[0] - size)
            j = rng.integers(photo.shape[1] - size)
            x.append(photo[i : i + size, j : j + size])
            y.append(label)
    x, y = np.stack(x), np.asarray(y)
    return train_test_split(x, y, n_test=200, seed=seed)


def uniform_all_float_weights(model) -> None:
    """Xplique's draw (uniform [0, 1)) into every float weight, caches included."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights(
                [
                    rng.uniform(size=w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
                    for w in weights
                ]
            )


def randomization_check(otnn, x) -> dict:
    xplique_metrics = __import__("xplique.metrics", fromlist=["x"])
    report = {"trained_max_abs_logit": float(np.abs(otnn.predict(x, verbose=0)).max())}
    try:
        xplique_metrics.ProgressiveLayerRandomization(1.0).randomize(_clone(otnn))
        report["xplique_error"] = None
    except Exception as error:  # noqa: BLE001 - reported as measured
        report["xplique_error"] = f"{type(error).__name__}: {str(error)[:120]}"
    for name, randomize in (
        ("xplique_float_weights", uniform_all_float_weights),
        ("deel_lip", LipschitzLayerRandomization(1.0, seed=0).randomize),
    ):
        clone = _clone(otnn)
        randomize(clone)
        bounds = lipschitz_bounds(clone)
        report[name] = {
            "max_ratio": max(sv / bound for sv, bound in bounds.values()),
            "layers": {k: {"sv": sv, "bound": b} for k, (sv, b) in bounds.items()},
            "max_abs_logit": float(np.abs(clone.predict(x, verbose=0)).max()),
        }
    return report


def _clone(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def run_rgb(args, start) -> list:
    """MACO on small RGB models (32x32 crops of the two sample photos), every seed."""
    entries = []
    for seed in range(args.seeds):
        keras.utils.set_random_seed(seed)
        data = rgb_data(seed)
        models = {"OTNN": small_otnn((32, 32, 3), 2), "CNN": cnn((32, 32, 3), 2, (16, 32, 32))}
        acc = train_pair(models["OTNN"], models["CNN"], data, args.otnn_epochs, 8)
        entry = {"seed": seed, "accuracy": acc, "maco": {}}
        for name, model in models.items():
            results = run_maco(model, range(2), seed, args.steps, args.crops)
            entry["maco"][name] = {
                "success": int(sum(r.success for r in results)),
                "ranks": [r.rank for r in results],
            }
            if seed == 0:
                plot_feature_visualizations(
                    results,
                    cols=2,
                    img_size=2.0,
                    save_path=OUT / f"xai_features_rgb_{name.lower()}.png",
                )
        print(
            f"[rgb seed {seed}] accuracy {acc}, MACO "
            f"{ {k: v['success'] for k, v in entry['maco'].items()} } "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        entries.append(entry)
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--crops", type=int, default=16)
    parser.add_argument("--otnn-epochs", type=int, default=5)
    parser.add_argument("--concepts", type=int, default=10)
    parser.add_argument("--design", type=int, default=16)
    parser.add_argument("--from-json", action="store_true", help="rewrite the tables only")
    parser.add_argument("--rgb-only", action="store_true", help="the RGB case only")
    parser.add_argument("--only-seed", type=int, default=None, help="one MNIST seed only")
    args = parser.parse_args()
    if args.from_json:
        report = json.loads((OUT / "xai_features_concepts.json").read_text())
        rgb_path = OUT / "xai_features_rgb.json"
        if not report["rgb"] and rgb_path.exists():
            report["rgb"] = json.loads(rgb_path.read_text())
        done = {entry["seed"] for entry in report["mnist"]}
        for path in sorted(OUT.glob("xai_features_concepts_seed*.json")):
            entry = json.loads(path.read_text())
            if entry["seed"] not in done:
                report["mnist"].append(entry)
                path.unlink()
        report["mnist"].sort(key=lambda entry: entry["seed"])
        save(report)
        write_markdown(report)
        return 0
    if args.rgb_only:
        report = {"rgb": run_rgb(args, time.perf_counter())}
        (OUT / "xai_features_rgb.json").write_text(json.dumps(report["rgb"], indent=2))
        return 0
    start = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    images, labels = load_mnist()
    report = {"settings": vars(args), "mnist": [], "rgb": []}
    seeds = range(args.seeds) if args.only_seed is None else [args.only_seed]
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        data = train_test_split(images, labels, n_test=1000, seed=seed)
        x_train, y_train, x_test, y_test = data
        models = {"OTNN": lipschitz_cnn("otnn"), "CNN": cnn()}
        acc = train_pair(models["OTNN"], models["CNN"], data, args.otnn_epochs, 8)
        print(f"[seed {seed}] accuracy {acc} ({time.perf_counter() - start:.0f} s)", flush=True)
        entry = {"seed": seed, "accuracy": acc, "maco": {}, "craft": {}}
        for name, model in models.items():
            results = run_maco(model, range(10), seed, args.steps, args.crops, x_train[:500])
            entry["maco"][name] = {
                "success": int(sum(r.success for r in results)),
                "ranks": [r.rank for r in results],
                "activations": [r.activation for r in results],
            }
            print(
                f"  MACO {name}: {entry['maco'][name]['success']}/10 ranks "
                f"{entry['maco'][name]['ranks']} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
            if seed == 0:
                plot_feature_visualizations(
                    results, cols=10, save_path=OUT / f"xai_features_mnist_{name.lower()}.png"
                )
            entry["craft"][name] = {}
            for class_id in CRAFT_CLASSES:
                craft, fidelity = run_craft(
                    model, x_train, y_train, x_test, y_test, class_id, args.concepts, args.design
                )
                entry["craft"][name][str(class_id)] = fidelity
                print(
                    f"  CRAFT {name} class {class_id}: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in fidelity.items() if isinstance(v, float))
                    + f" ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
                if seed == 0 and class_id == CRAFT_CLASSES[0]:
                    craft.plot_concepts(save_path=OUT / f"xai_concepts_{name.lower()}.png")
                    craft.plot_concept_maps(
                        x_test[y_test == class_id][:4],
                        save_path=OUT / f"xai_concepts_maps_{name.lower()}.png",
                    )
        if seed == 0:
            report["randomization"] = randomization_check(models["OTNN"], x_test[:100])
            ratios = {
                k: v["max_ratio"] for k, v in report["randomization"].items() if isinstance(v, dict)
            }
            print(f"  randomisation max sv/bound: {ratios}", flush=True)
        if args.only_seed is not None:  # merged by --from-json
            path = OUT / f"xai_features_concepts_seed{seed}.json"
            path.write_text(json.dumps(entry, indent=2))
            return 0
        report["mnist"].append(entry)
        save(report)  # partial results after every seed
    report["rgb"] = run_rgb(args, start)
    report["seconds"] = time.perf_counter() - start
    save(report)
    print(f"done in {report['seconds']:.0f} s", flush=True)
    return 0


def logit_areas(row: dict) -> dict:
    """The areas in logits (older reports kept only the normalised ones)."""
    row = dict(row)
    span = row["full"] - row["empty"] if row["full"] != row["empty"] else 1.0
    for key in ("deletion", "insertion", "deletion_random", "insertion_random"):
        row.setdefault(f"{key}_logit", row[key] * span + row["empty"])
    return row


def save(report: dict) -> None:
    (OUT / "xai_features_concepts.json").write_text(json.dumps(report, indent=2))
    write_markdown(report)


def fmt(values, digits=2) -> str:
    mean, se = mean_se(values)
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def write_markdown(report: dict) -> None:
    mnist, rgb = report["mnist"], report["rgb"]
    settings = report["settings"]
    n = len(mnist)
    lines = [
        f"Written by `scripts/xai_features_concepts.py` ({n} seeds, {settings['steps']} MACO "
        f"steps, {settings['crops']} crops per step, 28-pixel canvas, box size 0.9). Success: "
        "the visualisation of a class ranks that class first among the logits. Mean ± "
        "standard error over seeds.",
        "",
        "| data | model | test accuracy | MACO success (classes) |",
        "|---|---|---|---|",
    ]
    for label, entries, classes in (("MNIST", mnist, 10), ("RGB photos", rgb, 2)):
        for model in ("OTNN", "CNN") if entries else ():
            acc = fmt([e["accuracy"][model] for e in entries], 3)
            success = fmt([e["maco"][model]["success"] for e in entries])
            lines.append(f"| {label} | {model} | {acc} | {success} / {classes} |")
    lines += ["", "Per seed (MNIST ranks of classes 0-9):", ""]
    for e in mnist:
        for model in ("OTNN", "CNN"):
            lines.append(f"- seed {e['seed']} {model}: ranks {e['maco'][model]['ranks']}")
    lines.append("")
    (OUT / "xai_features.md").write_text("\n".join(lines))

    lines = [
        f"Written by `scripts/xai_features_concepts.py` ({n} seeds, {settings['concepts']} "
        f"concepts, Sobol with {settings['design']} designs, classes {list(CRAFT_CLASSES)}, "
        "cut after the second pooling layer, 50 test digits of the class). Deletion / "
        "insertion: area under the mean class logit `h((U m) W)` as concepts are removed / "
        "added by decreasing Sobol importance, `k/r` from 0 to 1 (deletion: lower is "
        "better; insertion: higher is better); *random*: the same with random orders; "
        "*full* / *empty*: the logit with every concept / none. In logits, so compare "
        "within a row (the OTNN's logits are smaller). *Sobol beats random* counts the seeds "
        "where the Sobol order beats the random one (deletion, insertion). Mean ± standard "
        "error over seeds.",
        "",
        "| model | class | NMF rel. error | full | empty | deletion | deletion (random) | "
        "insertion | insertion (random) | Sobol beats random |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in ("OTNN", "CNN"):
        for c in CRAFT_CLASSES:
            rows = [logit_areas(e["craft"][model][str(c)]) for e in mnist]
            cells = [
                fmt([r[k] for r in rows], 3)
                for k in (
                    "reconstruction_error",
                    "full",
                    "empty",
                    "deletion_logit",
                    "deletion_random_logit",
                    "insertion_logit",
                    "insertion_random_logit",
                )
            ]
            wins_del = sum(r["deletion_logit"] < r["deletion_random_logit"] for r in rows)
            wins_ins = sum(r["insertion_logit"] > r["insertion_random_logit"] for r in rows)
            cells.append(f"{wins_del}/{len(rows)}, {wins_ins}/{len(rows)}")
            lines.append(f"| {model} | {c} | " + " | ".join(cells) + " |")
    rand = report.get("randomization")
    if rand:
        lines += [
            "",
            "Model randomisation of every layer of the seed-0 OTNN:",
            "",
            "| strategy | max sv / bound over constrained layers | max abs logit |",
            "|---|---|---|",
            f"| trained model | - | {rand['trained_max_abs_logit']:.3g} |",
            "| Xplique's uniform draw into every float weight (caches included) | "
            f"{rand['xplique_float_weights']['max_ratio']:.4g} | "
            f"{rand['xplique_float_weights']['max_abs_logit']:.4g} |",
            f"| `LipschitzLayerRandomization` | {rand['deel_lip']['max_ratio']:.6f} | "
            f"{rand['deel_lip']['max_abs_logit']:.4g} |",
            "",
            "Xplique 2.0.2's `ProgressiveLayerRandomization` itself on this model: "
            f"{rand['xplique_error'] or 'ran'}.",
        ]
    lines.append("")
    (OUT / "xai_concepts.md").write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
