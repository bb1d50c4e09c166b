"""Training callbacks: condensation, singular-value monitoring, loss-parameter schedules.

`MonitorCallback` writes TensorBoard summaries, the one place of this module that calls
TensorFlow (`tf.summary`); the others use only Keras.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf  # tf.summary only (TensorBoard event files)
from keras import ops

__all__ = ["CondenseCallback", "MonitorCallback", "LossParamScheduler", "LossParamLog"]


def _walk_layers(model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model``, descending into nested models, each layer once."""
    seen = set()
    stack = list(reversed(getattr(model, "layers", [])))
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(reversed(getattr(layer, "layers", [])))


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, received: {value!r}")


@keras.saving.register_keras_serializable("deel_lip")
class CondenseCallback(keras.callbacks.Callback):
    """Call ``condense()`` on every layer that has it, during and after training.

    Condensing overwrites a constrained layer's raw kernel with its constrained kernel
    (see `deel_lip.layers.ConstrainedKernel.condense`), which keeps the raw weights from
    drifting in scale and refreshes the inference cache. Layers of nested models are
    included. Condensation always runs once more at the end of training, so the model
    leaves `fit` condensed.

    Overwriting the kernel changes the point the optimizer's moments refer to; condensing
    every batch with a momentum optimizer can slow training.

    Args:
        on_epoch: condense at the end of every epoch.
        on_batch: condense at the end of every training batch.

    Raises:
        ValueError: if ``on_epoch`` or ``on_batch`` is not a bool.
    """

    def __init__(self, on_epoch: bool = True, on_batch: bool = False):
        super().__init__()
        _check_bool("on_epoch", on_epoch)
        _check_bool("on_batch", on_batch)
        self.on_epoch = on_epoch
        self.on_batch = on_batch

    def condense_model(self) -> int:
        """Condense every condensable layer of the model; return how many were condensed."""
        count = 0
        for layer in _walk_layers(self.model):
            condense = getattr(layer, "condense", None)
            if callable(condense):
                condense()
                count += 1
        return count

    def on_train_batch_end(self, batch, logs=None):
        if self.on_batch:
            self.condense_model()

    def on_epoch_end(self, epoch, logs=None):
        if self.on_epoch:
            self.condense_model()

    def on_train_end(self, logs=None):
        self.condense_model()

    def get_config(self) -> dict:
        return {"on_epoch": self.on_epoch, "on_batch": self.on_batch}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


_TARGETS = {"kernel": "kernel", "wbar": "constrained_kernel"}
_WHATS = ("max", "all")


@keras.saving.register_keras_serializable("deel_lip")
class MonitorCallback(keras.callbacks.Callback):
    """Write the singular values of layers' kernel matrices to TensorBoard each epoch.

    At the end of every epoch, for each monitored layer, the kernel is reshaped to its
    matrix ``(-1, kernel.shape[-1])`` and its singular values are computed (numpy SVD).
    ``what="max"`` writes the largest one as a scalar, ``what="all"`` writes their
    histogram (and the largest one as a scalar). The largest one is also put in the epoch
    ``logs`` under ``"<layer>_<target>_sigma_max"``, so `History` and other callbacks see
    it. Summaries go to a `tf.summary` file writer in ``logdir``, at step = epoch index.

    Args:
        monitored_layers: names of the layers to monitor (searched in nested models too).
        logdir: TensorBoard log directory.
        target: ``"kernel"`` for the raw (trained) kernel, ``"wbar"`` for the constrained
            kernel (attribute ``constrained_kernel`` of `deel_lip` layers), which checks
            that the constraint holds.
        what: ``"max"`` (largest singular value) or ``"all"`` (histogram of all of them).
        on_epoch: write at the end of every epoch (step = epoch index).
        on_batch: write after every training batch (step = global batch index). With
            both, only the batches are written (one step axis), as in deel-lip.

    Raises:
        ValueError: if ``monitored_layers`` is empty or not a list of names, ``target`` or
            ``what`` is not one of the values above, ``on_epoch`` / ``on_batch`` is not a
            bool; at the start of training, if a monitored layer is missing or has no
            ``target`` attribute.
    """

    def __init__(
        self,
        monitored_layers: Sequence[str],
        logdir: str,
        target: str = "kernel",
        what: str = "max",
        on_epoch: bool = True,
        on_batch: bool = False,
    ):
        super().__init__()
        _check_bool("on_epoch", on_epoch)
        _check_bool("on_batch", on_batch)
        if isinstance(monitored_layers, str):
            monitored_layers = [monitored_layers]
        if (
            not isinstance(monitored_layers, Sequence)
            or not monitored_layers
            or not all(isinstance(n, str) for n in monitored_layers)
        ):
            raise ValueError(
                f"monitored_layers must be a non-empty list of layer names, "
                f"received: {monitored_layers!r}"
            )
        if not isinstance(logdir, (str, os.PathLike)):
            raise ValueError(f"logdir must be a path, received: {logdir!r}")
        if target not in _TARGETS:
            raise ValueError(f"target must be one of {tuple(_TARGETS)}, received: {target!r}")
        if what not in _WHATS:
            raise ValueError(f"what must be one of {_WHATS}, received: {what!r}")
        self.monitored_layers = list(monitored_layers)
        self.logdir = os.fspath(logdir)
        self.target = target
        self.what = what
        self.on_epoch = on_epoch
        self.on_batch = on_batch
        self._writer = None
        self._layers = {}
        self._batches_seen = 0

    @staticmethod
    def log_key(layer_name: str, target: str) -> str:
        """Key of the largest singular value in the epoch logs."""
        return f"{layer_name}_{target}_sigma_max"

    def _find_layers(self) -> dict:
        by_name = {}
        for layer in _walk_layers(self.model):
            by_name.setdefault(layer.name, layer)
        attribute = _TARGETS[self.target]
        found = {}
        for name in self.monitored_layers:
            if name not in by_name:
                raise ValueError(f"MonitorCallback: the model has no layer named {name!r}")
            if getattr(by_name[name], attribute, None) is None:
                raise ValueError(
                    f"MonitorCallback: layer {name!r} has no attribute {attribute!r} "
                    f"(target={self.target!r}); is it built, and a deel_lip layer for 'wbar'?"
                )
            found[name] = by_name[name]
        return found

    def singular_values(self, layer_name: str) -> np.ndarray:
        """Singular values (descending) of the monitored kernel matrix of a layer."""
        layer = self._layers[layer_name]
        if self.target == "wbar" and hasattr(layer, "current_constrained_kernel"):
            kernel = layer.current_constrained_kernel()  # the cache may be one step old
        else:
            kernel = getattr(layer, _TARGETS[self.target])
        kernel = ops.convert_to_numpy(kernel)
        matrix = np.asarray(kernel, dtype=np.float64).reshape(-1, kernel.shape[-1])
        return np.linalg.svd(matrix, compute_uv=False)

    def on_train_begin(self, logs=None):
        self._layers = self._find_layers()
        self._writer = tf.summary.create_file_writer(self.logdir)

    def _write(self, step: int, logs) -> None:
        with self._writer.as_default():
            for name in self.monitored_layers:
                sigmas = self.singular_values(name)
                sigma_max = float(sigmas[0])
                tag = f"{name}/{self.target}_singular_values"
                tf.summary.scalar(f"{tag}_max", sigma_max, step=step)
                if self.what == "all":
                    tf.summary.histogram(tag, sigmas, step=step)
                if logs is not None:
                    logs[self.log_key(name, self.target)] = sigma_max
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        self._batches_seen += 1
        if self._writer is not None and self.on_batch:
            self._write(self._batches_seen - 1, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is not None and self.on_epoch and not self.on_batch:
            self._write(epoch, logs)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def get_config(self) -> dict:
        return {
            "monitored_layers": list(self.monitored_layers),
            "logdir": self.logdir,
            "target": self.target,
            "what": self.what,
            "on_epoch": self.on_epoch,
            "on_batch": self.on_batch,
        }

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


def _loss_of(model, param_name: str, caller: str):
    loss = getattr(model, "loss", None)
    if loss is None or not hasattr(loss, param_name):
        raise ValueError(
            f"{caller}: the model's loss {loss!r} has no attribute {param_name!r}; compile "
            f"the model with a loss object that holds this hyper-parameter."
        )
    return loss


def _read(value) -> float:
    if isinstance(value, keras.Variable):
        return float(ops.convert_to_numpy(value))
    return float(value)


def _check_param_name(param_name) -> None:
    if not isinstance(param_name, str) or not param_name.isidentifier():
        raise ValueError(f"param_name must be an attribute name, received: {param_name!r}")


@keras.saving.register_keras_serializable("deel_lip")
class LossParamScheduler(keras.callbacks.Callback):
    """Piecewise-linear schedule of a hyper-parameter of the model's loss.

    Before every training batch, ``model.loss.<param_name>`` is set to
    ``np.interp(step, xp, fp)`` (constant ``fp[0]`` before ``xp[0]`` and ``fp[-1]`` after
    ``xp[-1]``), then ``step`` is incremented. ``step`` counts training batches across
    epochs and successive `fit` calls (with ``steps_per_execution=N`` Keras calls the
    batch hooks once per ``N`` batches, and ``step`` counts those calls).

    If the attribute is a `keras.Variable` it is assigned, so the new value reaches the
    compiled train step. Any other attribute is replaced with ``setattr``; a compiled train
    step does not see that change (the value was frozen when the step was traced), so a
    warning is emitted unless the model runs eagerly.

    Args:
        param_name: name of the loss attribute to schedule.
        fp: values of the parameter at the steps ``xp``.
        xp: increasing steps (batch counts) at which the parameter equals ``fp``.
        step: current step (restored from a config to resume a schedule).

    Raises:
        ValueError: for a bad ``param_name``, ``xp`` and ``fp`` of different or zero
            lengths, non-finite values, ``xp`` not increasing, a negative ``step``; at the
            start of training, if the model's loss has no attribute ``param_name``, or if
            a value of ``fp`` is out of the range the deel_lip loss accepts for it
            (e.g. ``alpha < 0``, or ``alpha > 1`` for a loss built with ``convex=True``).
    """

    def __init__(self, param_name: str, fp: Sequence[float], xp: Sequence[float], step: int = 0):
        super().__init__()
        _check_param_name(param_name)
        fp_arr = np.asarray(fp, dtype=np.float64)
        xp_arr = np.asarray(xp, dtype=np.float64)
        if fp_arr.ndim != 1 or xp_arr.ndim != 1 or fp_arr.size == 0 or fp_arr.size != xp_arr.size:
            raise ValueError(
                f"fp and xp must be 1D sequences of the same non-zero length, received "
                f"fp={fp!r}, xp={xp!r}"
            )
        if not (np.all(np.isfinite(fp_arr)) and np.all(np.isfinite(xp_arr))):
            raise ValueError(f"fp and xp must be finite, received fp={fp!r}, xp={xp!r}")
        if np.any(np.diff(xp_arr) <= 0):
            raise ValueError(f"xp must be strictly increasing, received: {xp!r}")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be an integer >= 0, received: {step!r}")
        self.param_name = param_name
        self.fp = [float(v) for v in fp_arr]
        self.xp = [float(v) for v in xp_arr]
        self.step = int(step)

    def value_at(self, step: int) -> float:
        """The scheduled value at a given step."""
        return float(np.interp(step, self.xp, self.fp))

    def on_train_begin(self, logs=None):
        from deel_lip.losses._base import HyperParameter

        loss = _loss_of(self.model, self.param_name, "LossParamScheduler")
        descriptor = getattr(type(loss), self.param_name, None)
        if isinstance(descriptor, HyperParameter):
            # The schedule assigns the variable directly: check its values now, as the
            # loss's constructor would (every check is an interval, so the interpolated
            # values between checked ones are valid too).
            for value in self.fp:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    checked = loss.check_hyper(self.param_name, value)
                if checked != value:
                    raise ValueError(
                        f"LossParamScheduler assigns {self.param_name!r} as given, but "
                        f"{self.param_name}={value!r} is outside the range the loss accepts "
                        f"as is (its constructor would read it as {checked!r})"
                    )
        current = getattr(loss, self.param_name)
        if not isinstance(current, keras.Variable) and not self.model.run_eagerly:
            warnings.warn(
                f"LossParamScheduler: loss attribute {self.param_name!r} is not a "
                "keras.Variable; the compiled train step will not see its new values. "
                "Store it in a keras.Variable or compile with run_eagerly=True.",
                stacklevel=2,
            )

    def on_train_batch_begin(self, batch, logs=None):
        loss = _loss_of(self.model, self.param_name, "LossParamScheduler")
        value = self.value_at(self.step)
        current = getattr(loss, self.param_name)
        if isinstance(current, keras.Variable):
            current.assign(ops.cast(value, current.dtype))
        else:
            setattr(loss, self.param_name, value)
        self.step += 1

    def get_config(self) -> dict:
        return {
            "param_name": self.param_name,
            "fp": list(self.fp),
            "xp": list(self.xp),
            "step": self.step,
        }

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


@keras.saving.register_keras_serializable("deel_lip")
class LossParamLog(keras.callbacks.Callback):
    """Report the current value of a hyper-parameter of the model's loss.

    At the end of every epoch the value of ``model.loss.<param_name>`` is put in the epoch
    ``logs`` under ``param_name`` (so `History` records it), and it is printed every
    ``rate`` epochs (epochs ``0, rate, 2 rate, ...``).

    Args:
        param_name: name of the loss attribute.
        rate: print every ``rate`` epochs (integer >= 1).

    Raises:
        ValueError: for a bad ``param_name`` or ``rate``; at the start of training, if the
            model's loss has no attribute ``param_name``.
    """

    def __init__(self, param_name: str, rate: int = 1):
        super().__init__()
        _check_param_name(param_name)
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate < 1:
            raise ValueError(f"rate must be an integer >= 1, received: {rate!r}")
        self.param_name = param_name
        self.rate = int(rate)

    def current_value(self) -> float:
        """Current value of the loss parameter."""
        loss = _loss_of(self.model, self.param_name, "LossParamLog")
        return _read(getattr(loss, self.param_name))

    def on_train_begin(self, logs=None):
        _loss_of(self.model, self.param_name, "LossParamLog")

    def on_epoch_end(self, epoch, logs=None):
        value = self.current_value()
        if logs is not None:
            logs[self.param_name] = value
        if epoch % self.rate == 0:
            print(f"Epoch {epoch + 1}: {self.param_name} = {value:.6g}")

    def get_config(self) -> dict:
        return {"param_name": self.param_name, "rate": self.rate}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)
