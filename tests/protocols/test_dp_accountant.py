"""zCDP accountant: conversions against dp_accounting, ledger check-then-commit."""

from __future__ import annotations

import dataclasses
import math
import threading

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.dp import (
    DpConfigError,
    Mechanism,
    NoiseRelease,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    total_rho,
    zcdp_epsilon,
    zcdp_epsilon_classical,
    zcdp_rho_for_epsilon,
)

COMPOSITIONS = [
    (1.0, 1, 1e-5),
    (2.0, 10, 1e-6),
    (5.0, 50, 1e-6),
    (10.0, 100, 1e-8),
    (0.7, 3, 1e-5),
    (20.0, 5, 1e-6),
]


def _gaussian_event(noise_multiplier: float, count: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(noise_multiplier=noise_multiplier), count
    )


@pytest.mark.parametrize(("sigma", "count", "delta"), COMPOSITIONS)
def test_epsilon_is_valid_upper_bound_vs_pld(sigma: float, count: int, delta: float) -> None:
    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    pld.compose(_gaussian_event(sigma, count))
    exact = pld.get_epsilon(delta)
    ledger = PrivacyLedger(epsilon=1e6, delta=delta)
    for _ in range(count):
        ledger.spend(NoiseRelease(Mechanism.GAUSSIAN, sigma=3.0 * sigma, sensitivity=3.0))
    ours = ledger.epsilon_spent
    assert exact <= ours <= 1.15 * exact  # valid, and within 15% of the optimal PLD bound


@pytest.mark.parametrize(("sigma", "count", "delta"), COMPOSITIONS)
def test_epsilon_matches_rdp_accountant(sigma: float, count: int, delta: float) -> None:
    rdp = rdp_privacy_accountant.RdpAccountant()
    rdp.compose(_gaussian_event(sigma, count))
    release = NoiseRelease(Mechanism.GAUSSIAN, sigma=sigma, sensitivity=1.0, count=count)
    ours = zcdp_epsilon(release.rho, delta)
    # same conversion, but we optimise alpha continuously instead of on a grid
    assert ours <= rdp.get_epsilon(delta) * (1 + 1e-9)
    assert ours == pytest.approx(rdp.get_epsilon(delta), rel=2e-3)


@pytest.mark.parametrize("rho", [1e-4, 0.01, 0.3, 2.0, 40.0])
@pytest.mark.parametrize("delta", [1e-9, 1e-5, 1e-2])
def test_tight_conversion_never_worse_than_classical(rho: float, delta: float) -> None:
    tight = zcdp_epsilon(rho, delta)
    assert 0 <= tight <= zcdp_epsilon_classical(rho, delta)
    if tight > 0:  # tiny rho at large delta is (0, delta)-DP, and the bound says so
        assert zcdp_rho_for_epsilon(tight, delta) == pytest.approx(rho, rel=1e-6)


def test_conversion_edge_cases() -> None:
    assert zcdp_epsilon(0.0, 1e-6) == 0.0
    with pytest.raises(DpConfigError):
        zcdp_epsilon(-1.0, 1e-6)
    with pytest.raises(DpConfigError):
        zcdp_epsilon(1.0, 1.5)
    with pytest.raises(DpConfigError):
        zcdp_rho_for_epsilon(0.0, 1e-6)


def test_release_record_is_frozen_and_validated() -> None:
    release = NoiseRelease(Mechanism.GAUSSIAN, 2.0, 1.0, count=4, purpose="gradient")
    assert release.rho == pytest.approx(4 * 1.0 / (2 * 4.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        release.sigma = 1.0  # type: ignore[misc]
    for bad in ({"sigma": 0.0}, {"sensitivity": -1.0}, {"count": 0}, {"sigma": math.inf}):
        with pytest.raises(DpConfigError):
            fields = {"mechanism": Mechanism.GAUSSIAN, "sigma": 1.0, "sensitivity": 1.0}
            NoiseRelease(**{**fields, **bad})
    assert total_rho([release, release]) == pytest.approx(2 * release.rho)


def test_refused_release_leaves_no_trace() -> None:
    ledger = PrivacyLedger(epsilon=1.0, delta=1e-6)
    cheap = NoiseRelease(Mechanism.GAUSSIAN, sigma=10.0, sensitivity=1.0, purpose="round 1")
    ledger.spend(cheap)
    entries, rho, eps = ledger.entries, ledger.rho_spent, ledger.epsilon_spent
    costly = NoiseRelease(Mechanism.GAUSSIAN, sigma=1.0, sensitivity=1.0, purpose="round 2")
    assert not ledger.can_spend(costly)
    with pytest.raises(PrivacyBudgetExceeded) as info:
        ledger.spend(costly)
    message = str(info.value)
    assert "round 2" in message and "would" in message
    assert f"{ledger.epsilon_if(costly):.6g}" in message  # the epsilon it would need
    assert f"remaining rho={ledger.rho_remaining:.6g}" in message  # what is left
    assert ledger.entries is entries
    assert (ledger.rho_spent, ledger.epsilon_spent) == (rho, eps)
    ledger.spend(cheap)  # a release that fits is still accepted afterwards
    assert [e.index for e in ledger.entries] == [0, 1]
    assert ledger.entries[-1].rho_total == pytest.approx(2 * cheap.rho)


def test_budget_is_used_up_exactly() -> None:
    ledger = PrivacyLedger(epsilon=2.0, delta=1e-6)
    rho_max = zcdp_rho_for_epsilon(2.0, 1e-6)
    half = math.sqrt(rho_max) * (1 - 1e-12)  # rho = half^2 / 2, just under rho_max / 2
    release = NoiseRelease(Mechanism.GAUSSIAN, sigma=1.0, sensitivity=half)
    ledger.spend(release)
    ledger.spend(release)  # two halves fill the budget to within bisection tolerance
    assert ledger.epsilon_spent <= 2.0
    assert ledger.rho_remaining == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.spend(NoiseRelease(Mechanism.GAUSSIAN, sigma=1e3, sensitivity=1.0))


@settings(max_examples=60, deadline=None)
@given(
    budget=st.floats(0.1, 10.0),
    sigmas=st.lists(st.floats(0.2, 50.0), min_size=1, max_size=25),
)
def test_ledger_never_exceeds_budget(budget: float, sigmas: list[float]) -> None:
    ledger = PrivacyLedger(epsilon=budget, delta=1e-6)
    for sigma in sigmas:
        release = NoiseRelease(Mechanism.GAUSSIAN, sigma=sigma, sensitivity=1.0)
        before = (ledger.entries, ledger.rho_spent)
        try:
            ledger.spend(release)
        except PrivacyBudgetExceeded:
            assert (ledger.entries, ledger.rho_spent) == before
        assert ledger.epsilon_spent <= budget
    assert ledger.rho_spent == pytest.approx(total_rho(e.release for e in ledger.entries))


def test_concurrent_spends_cannot_overdraw() -> None:
    ledger = PrivacyLedger(epsilon=1.0, delta=1e-6)
    release = NoiseRelease(Mechanism.GAUSSIAN, sigma=8.0, sensitivity=1.0)
    fits = int(zcdp_rho_for_epsilon(1.0, 1e-6) // release.rho)

    def worker() -> None:
        for _ in range(fits):
            try:
                ledger.spend(release)
            except PrivacyBudgetExceeded:
                return

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ledger.entries) == fits
    assert ledger.epsilon_spent <= 1.0


def test_invalid_budget_rejected() -> None:
    with pytest.raises(DpConfigError):
        PrivacyLedger(epsilon=0.0, delta=1e-6)
    with pytest.raises(DpConfigError):
        PrivacyLedger(epsilon=1.0, delta=0.0)
