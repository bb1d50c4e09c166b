"""`evaluate_attributions`: a table of Xplique metrics for Xplique attribution methods.

`seeded` runs a block with fixed random seeds and leaves the caller's random streams as
they were. The Xplique quirks `evaluate_attributions` handles are listed in its docstring.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf  # Xplique draws from TensorFlow's global random stream

from deel_lip.xai._xplique import (
    COMPLEXITY_METRICS,
    EXPLANATION_METRICS,
    RANDOMIZATION_METRICS,
    attribution_class,
    metric_class,
    require_xplique,
)
from deel_lip.xai.explain import explainer
from deel_lip.xai.models import logits_model
from deel_lip.xai.targets import targets_from_labels

__all__ = ["evaluate_attributions", "seeded"]


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, received: {seed!r}")
    return int(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with TensorFlow, numpy and Python random seeds set to ``seed``.

    Xplique draws its masks and noise from these global streams. On exit numpy's and
    Python's states are restored exactly; TensorFlow's global state cannot be read, so
    it is re-seeded with a number drawn from it on entry: later random operations (data
    shuffling in ``fit``...) stay reproducible and differ from one block to the next.

    Raises:
        ValueError: if ``seed`` is not an int >= 0.
    """
    seed = check_seed(seed)
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    next_seed = int(tf.random.uniform((), maxval=2**31 - 1, dtype=tf.int64))
    tf.random.set_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        tf.random.set_seed(next_seed)


def _as_list(value) -> list:
    if isinstance(value, (str, type)):
        return [value]
    return list(value)


def metric_name(metric) -> str:
    if isinstance(metric, str) and metric.lower() == "reco":
        return "ReCo"
    return metric_class(metric).__name__


def check_kwargs(argument: str, kwargs, names: list[str]) -> dict:
    kwargs = dict(kwargs or {})
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise ValueError(
            f"{argument} keys must be among the requested names {names}, received: {unknown}"
        )
    for name, value in kwargs.items():
        if not isinstance(value, dict):
            raise ValueError(f"{argument}[{name!r}] must be a dict, received: {value!r}")
    return kwargs


def _weighted_layers(model) -> int:
    return sum(1 for layer in model.layers if layer.weights)


class _MetricRunner:
    """Builds each metric once per table (seeded) and evaluates it for every method."""

    def __init__(self, view, inputs, targets, metric_kwargs, learning_algorithm, seed):
        self.metrics = require_xplique().metrics
        self.view = view
        self.inputs = inputs
        self.targets = targets
        self.metric_kwargs = metric_kwargs
        self.learning_algorithm = learning_algorithm
        self.seed = seed
        self._built = {}
        self._mege_values = {}

    def _build(self, name: str):
        kwargs = dict(self.metric_kwargs.get(name, {}))
        if name in ("MeGe", "ReCo"):
            kwargs = dict(self.metric_kwargs.get("MeGe") or self.metric_kwargs.get("ReCo") or {})
            learn = _quiet(self.learning_algorithm)
            return self.metrics.MeGe(learn, self.inputs, self.targets, **kwargs)
        cls = metric_class(name)
        if name in COMPLEXITY_METRICS:
            return cls(**kwargs)
        if name in RANDOMIZATION_METRICS:
            kwargs.setdefault("seed", self.seed)
        if name == "ModelRandomizationMetric" and "randomization_strategy" not in kwargs:
            # Constrained layers are randomised through their raw kernels (bounds kept).
            from deel_lip.xai.randomization import randomization_strategy

            kwargs["randomization_strategy"] = randomization_strategy(
                self.view, 0.25, seed=self.seed
            )
        return cls(self.view, self.inputs, self.targets, **kwargs)

    def metric(self, name: str):
        key = "MeGe" if name == "ReCo" else name
        if key not in self._built:
            with seeded(self.seed):
                self._built[key] = self._build(name)
        return self._built[key]

    def evaluate(self, name, method_cls, method_kwargs, explain, explanations) -> float:
        metric = self.metric(name)
        with seeded(self.seed):
            if name in EXPLANATION_METRICS or name in COMPLEXITY_METRICS:
                return float(metric.evaluate(explanations))
            if name == "AverageStability":
                return float(metric.evaluate(explain, base_explanations=explanations))
            if name in RANDOMIZATION_METRICS:
                return float(metric.evaluate(explain))
            if method_cls not in self._mege_values:
                factory = functools.partial(explainer, method_cls)
                self._mege_values[method_cls] = metric.evaluate(factory, method_kwargs)
        mege, reco = self._mege_values[method_cls]
        return float(mege if name == "MeGe" else reco)


def _quiet(learning_algorithm):
    """MeGe calls ``model.predict`` with Keras' default progress bar: silence it."""

    @functools.wraps(learning_algorithm)
    def learn(*args):
        model = learning_algorithm(*args)
        if isinstance(model, keras.Model):
            model.predict = functools.partial(model.predict, verbose=0)
        return model

    return learn


def _check_metric_inputs(metric_names, inputs, num_classes, learning_algorithm, kwargs):
    for name in metric_names:
        if name == "RandomLogitMetric":
            if inputs.ndim < 3:
                raise ValueError(
                    "RandomLogitMetric compares explanations with SSIM and needs images or "
                    f"sequences (inputs of rank >= 3), received inputs of shape {inputs.shape}"
                )
            if num_classes is None or num_classes < 2:
                raise ValueError("RandomLogitMetric needs a model with at least 2 outputs")
        if name in ("MeGe", "ReCo"):
            if learning_algorithm is None:
                raise ValueError(
                    f"{name} retrains the model on splits of the inputs: pass "
                    "learning_algorithm=f(x_train, y_train, x_test, y_test) -> trained model"
                )
            k_splits = (kwargs.get("MeGe") or kwargs.get("ReCo") or {}).get("k_splits", 4)
            if len(inputs) % k_splits:
                raise ValueError(
                    f"MeGe's k_splits ({k_splits}) must divide the number of inputs ({len(inputs)})"
                )


def evaluate_attributions(
    model: keras.Model,
    inputs,
    labels,
    methods,
    metrics,
    *,
    method_kwargs: dict | None = None,
    metric_kwargs: dict | None = None,
    learning_algorithm=None,
    seed: int = 0,
    input_shape=None,
) -> dict[str, dict[str, float]]:
    """Xplique metrics of Xplique attribution methods on ``(inputs, labels)``.

    For each method, the explanations of ``inputs`` are computed once (`explainer`, on the
    logits of the model); every metric is built once per call, from the current model, and
    evaluated for every method; each of these steps runs inside `seeded(seed)`, so that:

    * metrics that freeze the model's predictions at construction (``MuFidelity``) or draw
      their noise there (``AverageStability``) see the current weights - evaluating again
      after training gives new values, never stale ones;
    * the random masks, noise and draws of every method and metric are the same from one
      call to the next (epochs of a training run are comparable, two runs with the same
      seed give the same table), and the caller's random streams are left as they were
      (``RandomLogitMetric`` and ``ModelRandomizationMetric`` reset TensorFlow's global
      seed at construction; `seeded` undoes that).

    Quirks handled besides: labels may be class indices or one-hot rows (Xplique wants
    one-hot); ``ModelRandomizationMetric`` randomises by default the top 25% of the layers
    with weights *and at least one* (Xplique's default randomises ``int(0.25 n)`` layers:
    none at all on a model with fewer than four, which gives a perfect but meaningless
    score); ``ReCo`` is the second value of Xplique's ``MeGe``, computed with it (and
    the progress bars of ``MeGe``'s ``model.predict`` calls are silenced); metrics
    that need images or sequences (``RandomLogitMetric``) and ``MeGe``'s split size are
    checked upfront with clear errors.

    Args:
        model: the model to explain (any Keras / deel_lip model, see `logits_model`).
        inputs: array ``(N, ...)`` of inputs.
        labels: class indices ``(N,)`` or one-hot rows ``(N, num_classes)``.
        methods: a method name or Xplique class, or a list of them (`ATTRIBUTION_METHODS`).
        metrics: a metric name or a list of them (`METRICS`, any case).
        method_kwargs: ``{method name: {argument: value}}`` for `explainer`.
        metric_kwargs: ``{metric name: {argument: value}}`` for the Xplique metric (e.g.
            ``{"MuFidelity": {"nb_samples": 20, "grid_size": 4}}``).
        learning_algorithm: for ``MeGe`` / ``ReCo``: ``f(x_train, y_train, x_test,
            y_test)`` returning a model trained on a split (labels one-hot).
        seed: seed of every random draw (>= 0).
        input_shape: input shape without the batch axis, for a model without a defined
            input.

    Returns:
        ``{method name: {metric name: value}}`` (Python floats).

    Raises:
        ValueError: unknown or repeated method / metric names, keyword dicts for names
            that are not requested, ``inputs`` and ``labels`` of different lengths, a
            wrong label encoding, ``MeGe`` / ``ReCo`` without ``learning_algorithm`` or
            with ``k_splits`` not dividing ``N``, ``RandomLogitMetric`` on tabular inputs,
            or any error of `explainer`.
    """
    require_xplique()
    seed = check_seed(seed)
    method_classes = [attribution_class(method) for method in _as_list(methods)]
    method_names = [cls.__name__ for cls in method_classes]
    metric_names = [metric_name(metric) for metric in _as_list(metrics)]
    for argument, names in (("methods", method_names), ("metrics", metric_names)):
        if len(set(names)) != len(names):
            raise ValueError(f"{argument} must not repeat a name, received: {names}")
    method_kwargs = check_kwargs("method_kwargs", method_kwargs, method_names)
    metric_kwargs = check_kwargs("metric_kwargs", metric_kwargs, metric_names)
    inputs = np.asarray(inputs, dtype="float32")
    view = logits_model(model, input_shape=input_shape)
    output_shape = view.outputs[0].shape
    num_classes = int(output_shape[-1]) if len(output_shape) == 2 else None
    targets = labels if num_classes is None else targets_from_labels(labels, num_classes)
    if len(targets) != len(inputs):
        raise ValueError(
            f"inputs and labels must have the same length, received {len(inputs)} inputs "
            f"and {len(targets)} labels"
        )
    _check_metric_inputs(metric_names, inputs, num_classes, learning_algorithm, metric_kwargs)
    runner = _MetricRunner(view, inputs, targets, metric_kwargs, learning_algorithm, seed)
    table = {}
    for cls, name in zip(method_classes, method_names):
        kwargs = method_kwargs.get(name, {})
        with seeded(seed):
            explain = explainer(cls, model, input_shape=input_shape, **kwargs)
            explanations = np.asarray(explain(inputs, targets))
        table[name] = {}
        for metric in metric_names:
            table[name][metric] = runner.evaluate(metric, cls, kwargs, explain, explanations)
    return table
