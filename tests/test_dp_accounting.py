"""Accounting of clipless DP-SGD agrees with dp-accounting's own DP-SGD events."""

import dp_accounting as dpa
import pytest

from deel_lip import dp

N, B, SIGMA, DELTA = 60000, 256, 1.1, 1e-5


@pytest.mark.parametrize("steps", [1, 100, 2345])
def test_rdp_poisson_matches_dp_accounting(steps):
    own = dpa.rdp.RdpAccountant()
    event = dpa.PoissonSampledDpEvent(B / N, dpa.GaussianDpEvent(SIGMA))
    own.compose(dpa.SelfComposedDpEvent(event, steps))
    expected = own.get_epsilon(DELTA)
    got = dp.compute_epsilon(SIGMA, steps, DELTA, batch_size=B, dataset_size=N)
    assert got == pytest.approx(expected, rel=1e-12)


def test_pld_poisson_matches_dp_accounting():
    own = dpa.pld.PLDAccountant()
    event = dpa.PoissonSampledDpEvent(B / N, dpa.GaussianDpEvent(SIGMA))
    own.compose(dpa.SelfComposedDpEvent(event, 500))
    got = dp.compute_epsilon(SIGMA, 500, DELTA, batch_size=B, dataset_size=N, accountant="pld")
    assert got == pytest.approx(own.get_epsilon(DELTA), rel=1e-9)
    # PLD is tighter than RDP for the same mechanism
    assert got < dp.compute_epsilon(SIGMA, 500, DELTA, batch_size=B, dataset_size=N)


def test_fixed_size_uses_replace_one_without_replacement():
    own = dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    event = dpa.SampledWithoutReplacementDpEvent(N, B, dpa.GaussianDpEvent(SIGMA))
    own.compose(dpa.SelfComposedDpEvent(event, 300))
    got = dp.compute_epsilon(SIGMA, 300, DELTA, batch_size=B, dataset_size=N, sampling="fixed")
    assert got == pytest.approx(own.get_epsilon(DELTA), rel=1e-12)
    with pytest.raises(ValueError, match="accountant='pld' does not support sampling='fixed'"):
        dp.compute_epsilon(
            SIGMA, 3, DELTA, batch_size=B, dataset_size=N, sampling="fixed", accountant="pld"
        )


@pytest.mark.parametrize("accountant", ["rdp", pytest.param("pld", marks=pytest.mark.slow)])
def test_noise_multiplier_for_target(accountant):
    """Calibrated sigma meets the target and 2% less does not (PLD: few steps, it is slow)."""
    batch = B if accountant == "rdp" else N // 20
    sigma = dp.noise_multiplier_for(
        3.0, DELTA, 2, batch_size=batch, dataset_size=N, accountant=accountant
    )
    steps = dp.steps_for_epochs(2, batch, N)
    kwargs = {"batch_size": batch, "dataset_size": N, "accountant": accountant}
    assert dp.compute_epsilon(sigma, steps, DELTA, **kwargs) <= 3.0 + 1e-6
    assert dp.compute_epsilon(sigma * 0.98, steps, DELTA, **kwargs) > 3.0


def test_max_epochs_is_the_largest_within_budget():
    epochs = dp.max_epochs(SIGMA, 2.0, DELTA, batch_size=B, dataset_size=N)
    steps = round(epochs * N / B)
    kwargs = {"batch_size": B, "dataset_size": N}
    assert dp.compute_epsilon(SIGMA, steps, DELTA, **kwargs) <= 2.0
    assert dp.compute_epsilon(SIGMA, steps + 1, DELTA, **kwargs) > 2.0
    assert dp.max_epochs(0.3, 0.01, DELTA, batch_size=B, dataset_size=N) == 0.0


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"delta": 1.0}, "delta"),
        ({"batch_size": N + 1}, "batch_size"),
        ({"sampling": "shuffle"}, "sampling"),
        ({"accountant": "moments"}, "accountant"),
        ({"steps": -1}, "steps"),
    ],
)
def test_invalid_arguments_named(kwargs, name):
    args = {"noise_multiplier": SIGMA, "steps": 10, "delta": DELTA}
    args.update({k: v for k, v in kwargs.items() if k in args})
    extra = {"batch_size": B, "dataset_size": N}
    extra.update({k: v for k, v in kwargs.items() if k not in args})
    with pytest.raises(ValueError, match=name):
        dp.compute_epsilon(args["noise_multiplier"], args["steps"], args["delta"], **extra)


def test_missing_dp_accounting_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "dp_accounting", None)
    with pytest.raises(ImportError, match=r"keras-lipschitz\[dp\]"):
        dp.compute_epsilon(SIGMA, 10, DELTA, batch_size=B, dataset_size=N)
