"""Privacy accounting of clipless DP-SGD with Google's ``dp-accounting``.

One training step releases a subsampled Gaussian mechanism of noise multiplier
``sigma`` (`deel_lip.dp.model`): ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``
under add/remove-one neighbours for ``sampling="poisson"``, or
``SampledWithoutReplacementDpEvent(N, B, GaussianDpEvent(sigma))`` under replace-one
neighbours for ``sampling="fixed"`` (RDP accountant only: dp-accounting's PLD accountant
does not treat sampling without replacement). ``steps`` steps compose them
(``SelfComposedDpEvent``). RDP: Mironov 2017, Mironov-Talwar-Zhang 2019, Wang-Balle-
Kasiviswanathan 2019; PLD: Koskela et al. 2020, Doroshenko et al. 2022.

``dp-accounting`` is imported on first use (the ``dp`` extra).
"""

from __future__ import annotations

import contextlib
import logging
import math

import keras

__all__ = [
    "DP_EXTRA_HINT",
    "dp_sgd_event",
    "make_accountant",
    "compute_epsilon",
    "steps_for_epochs",
    "noise_multiplier_for",
    "max_epochs",
    "max_steps",
    "PrivacyBudgetCallback",
]

#: How to install the accountant's dependency.
DP_EXTRA_HINT = 'pip install "keras-lipschitz[dp]" (dp-accounting>=0.4)'
ACCOUNTANTS = ("rdp", "pld")


def _dp_accounting():
    try:
        import dp_accounting
    except ImportError as error:
        raise ImportError(
            f"deel_lip.dp accounting needs dp-accounting (the 'dp' extra): {DP_EXTRA_HINT} "
            f"(import failed: {error})"
        ) from error
    return dp_accounting


@contextlib.contextmanager
def _quiet_absl():
    """Silence dp-accounting's per-order convergence warnings (orders it then skips)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check(name, value, low=0.0, integer=False, high=None):
    kinds = (int,) if integer else (int, float)
    bad = isinstance(value, bool) or not isinstance(value, kinds) or not value > low
    if bad or not math.isfinite(value) or (high is not None and not value < high):
        span = f"in ({low}, {high})" if high is not None else f"> {low}"
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind} {span}, received: {value!r}")


def _check_sampling(sampling: str, accountant: str) -> None:
    if sampling not in ("poisson", "fixed"):
        raise ValueError(f"sampling must be 'poisson' or 'fixed', received: {sampling!r}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, received: {accountant!r}")
    if sampling == "fixed" and accountant == "pld":
        raise ValueError(
            "accountant='pld' does not support sampling='fixed' (sampling without "
            "replacement): use accountant='rdp' or sampling='poisson'"
        )


def dp_sgd_event(noise_multiplier, steps, *, batch_size, dataset_size, sampling="poisson"):
    """The ``DpEvent`` of ``steps`` clipless DP-SGD steps (see the module docstring)."""
    dpa = _dp_accounting()
    _check("noise_multiplier", noise_multiplier)
    _check("steps", steps, low=-1, integer=True)
    _check("dataset_size", dataset_size, integer=True)
    _check("batch_size", batch_size, integer=True, high=dataset_size + 1)
    gaussian = dpa.GaussianDpEvent(noise_multiplier)
    if sampling == "poisson":
        step = dpa.PoissonSampledDpEvent(batch_size / dataset_size, gaussian)
    elif sampling == "fixed":
        step = dpa.SampledWithoutReplacementDpEvent(dataset_size, batch_size, gaussian)
    else:
        raise ValueError(f"sampling must be 'poisson' or 'fixed', received: {sampling!r}")
    return dpa.SelfComposedDpEvent(step, steps)


def make_accountant(accountant: str = "rdp", sampling: str = "poisson"):
    """A fresh ``RdpAccountant`` or ``PLDAccountant`` with the matching neighbouring relation."""
    _check_sampling(sampling, accountant)
    dpa = _dp_accounting()
    relation = dpa.NeighboringRelation
    rel = relation.ADD_OR_REMOVE_ONE if sampling == "poisson" else relation.REPLACE_ONE
    if accountant == "rdp":
        return dpa.rdp.RdpAccountant(neighboring_relation=rel)
    return dpa.pld.PLDAccountant(neighboring_relation=rel)


def compute_epsilon(
    noise_multiplier,
    steps,
    delta,
    *,
    batch_size,
    dataset_size,
    sampling="poisson",
    accountant="rdp",
) -> float:
    """Epsilon at ``delta`` after ``steps`` steps (0 for 0 steps)."""
    _check("delta", delta, high=1.0)
    _check_sampling(sampling, accountant)
    event = dp_sgd_event(
        noise_multiplier,
        steps,
        batch_size=batch_size,
        dataset_size=dataset_size,
        sampling=sampling,
    )
    if steps == 0:
        return 0.0
    acc = make_accountant(accountant, sampling)
    with _quiet_absl():
        acc.compose(event)
        return float(acc.get_epsilon(delta))


def steps_for_epochs(epochs, batch_size, dataset_size) -> int:
    """``ceil(epochs * N / B)``: steps of ``epochs`` expected passes over the data."""
    _check("epochs", epochs)
    return int(math.ceil(epochs * dataset_size / batch_size - 1e-9))


def noise_multiplier_for(
    target_epsilon,
    delta,
    epochs,
    *,
    batch_size,
    dataset_size,
    sampling="poisson",
    accountant="rdp",
    tol=1e-3,
) -> float:
    """Smallest noise multiplier (within ``tol``) whose epsilon after ``epochs`` is at most
    ``target_epsilon`` at ``delta`` (dp-accounting's ``calibrate_dp_mechanism``)."""
    dpa = _dp_accounting()
    _check("target_epsilon", target_epsilon)
    _check("delta", delta, high=1.0)
    _check_sampling(sampling, accountant)
    steps = steps_for_epochs(epochs, batch_size, dataset_size)

    def event(sigma):
        return dp_sgd_event(
            sigma, steps, batch_size=batch_size, dataset_size=dataset_size, sampling=sampling
        )

    bracket = dpa.LowerEndpointAndGuess(0.05, 1.0)
    if accountant == "pld":
        # RDP over-estimates epsilon, so its sigma is an upper end; starting near it keeps
        # the PLD accountant away from tiny sigmas, whose loss distributions are huge.
        upper = noise_multiplier_for(
            target_epsilon,
            delta,
            epochs,
            batch_size=batch_size,
            dataset_size=dataset_size,
            sampling=sampling,
            accountant="rdp",
            tol=tol,
        )
        bracket = dpa.ExplicitBracketInterval(0.5 * upper, upper * 1.01)
    with _quiet_absl():
        sigma = dpa.calibrate_dp_mechanism(
            lambda: make_accountant(accountant, sampling),
            event,
            target_epsilon,
            delta,
            bracket,
            tol=tol,
        )
    return float(sigma)


def max_steps(
    noise_multiplier,
    target_epsilon,
    delta,
    *,
    batch_size,
    dataset_size,
    sampling="poisson",
    accountant="rdp",
) -> int:
    """Largest number of steps whose epsilon at ``delta`` is at most ``target_epsilon``."""
    _check("target_epsilon", target_epsilon)

    def eps(steps):
        return compute_epsilon(
            noise_multiplier,
            steps,
            delta,
            batch_size=batch_size,
            dataset_size=dataset_size,
            sampling=sampling,
            accountant=accountant,
        )

    if eps(1) > target_epsilon:
        return 0
    low, high = 1, 2
    while eps(high) <= target_epsilon:
        low, high = high, high * 2
        if high > 10**9:
            return low
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if eps(mid) <= target_epsilon else (low, mid)
    return low


def max_epochs(
    noise_multiplier,
    target_epsilon,
    delta,
    *,
    batch_size,
    dataset_size,
    sampling="poisson",
    accountant="rdp",
) -> float:
    """`max_steps` in epochs (``steps * B / N``: whole steps within the budget)."""
    steps = max_steps(
        noise_multiplier,
        target_epsilon,
        delta,
        batch_size=batch_size,
        dataset_size=dataset_size,
        sampling=sampling,
        accountant=accountant,
    )
    return steps * batch_size / dataset_size


@keras.saving.register_keras_serializable("deel_lip")
class PrivacyBudgetCallback(keras.callbacks.Callback):
    """Log epsilon after every epoch (``logs["epsilon"]``) and stop at the budget.

    Counts the optimizer steps actually run; reads the privacy parameters from the
    model's ``dp_config`` (`deel_lip.dp.make_private`). With a budget, training stops
    after the last step that keeps epsilon within it (`max_steps`), mid-epoch if needed;
    the steps count across several ``fit`` calls with the same callback.

    Args:
        delta: target delta in (0, 1).
        epsilon_budget: budget (> 0) or None (log only).
        accountant: "rdp" or "pld".

    Attributes:
        history: list of ``(steps, epsilon)`` after each epoch.
    """

    def __init__(self, delta: float, epsilon_budget: float | None = None, accountant="rdp"):
        super().__init__()
        _check("delta", delta, high=1.0)
        if epsilon_budget is not None:
            _check("epsilon_budget", epsilon_budget)
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, received: {accountant!r}")
        self.delta = delta
        self.epsilon_budget = epsilon_budget
        self.accountant = accountant
        self.steps = 0
        self.max_steps: int | None = None
        self.history: list[tuple[int, float]] = []

    def get_config(self) -> dict:
        return {
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
            "accountant": self.accountant,
        }

    def _epsilon(self, steps: int) -> float:
        config = self.model.dp_config
        return compute_epsilon(
            config["noise_multiplier"],
            steps,
            self.delta,
            batch_size=config["batch_size"],
            dataset_size=config["dataset_size"],
            sampling=config["sampling"],
            accountant=self.accountant,
        )

    def on_train_begin(self, logs=None):
        config = getattr(self.model, "dp_config", None)
        if config is None:
            raise ValueError(
                "PrivacyBudgetCallback needs a model built by deel_lip.dp.make_private, "
                f"received {type(self.model).__name__}"
            )
        self.max_steps = None
        if self.epsilon_budget is not None:
            self.max_steps = max_steps(
                config["noise_multiplier"],
                self.epsilon_budget,
                self.delta,
                batch_size=config["batch_size"],
                dataset_size=config["dataset_size"],
                sampling=config["sampling"],
                accountant=self.accountant,
            )
            if self.max_steps <= self.steps:
                raise ValueError(
                    f"epsilon_budget={self.epsilon_budget} allows {self.max_steps} steps and "
                    f"{self.steps} already ran: no step can run within the budget"
                )

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.max_steps is not None and self.steps >= self.max_steps:
            self.model.stop_training = True  # Keras checks it before the next step

    def on_epoch_end(self, epoch, logs=None):
        epsilon = self._epsilon(self.steps)
        self.history.append((self.steps, epsilon))
        if logs is not None:
            logs["epsilon"] = epsilon
