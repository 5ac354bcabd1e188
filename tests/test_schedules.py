"""Temperature schedules: the Jang et al. (2017) exponential decay held for `every`
steps, the cosine decay, the constant, and their step counter / state_dict."""
import math

import pytest

from fused_gumbel.schedules import ConstantSchedule, CosineSchedule, ExponentialDecay, TemperatureSchedule


def test_constant_schedule_never_changes():
    schedule = ConstantSchedule(0.7)
    assert [schedule(step) for step in (0, 1, 10**6)] == [0.7, 0.7, 0.7]
    assert schedule.step() == 0.7 and schedule.last_step == 1


@pytest.mark.parametrize("step", [0, 1, 99, 100, 101, 250, 6_899, 6_900, 6_999, 7_000, 50_000])
def test_exponential_decay_matches_jang_formula_held_every_100_steps(step):
    schedule = ExponentialDecay(tau0=1.0, rate=1e-4, min_tau=0.5, every=100)
    held = step - step % 100
    assert schedule(step) == pytest.approx(max(0.5, math.exp(-1e-4 * held)), rel=1e-12)


def test_exponential_decay_is_piecewise_constant_non_increasing_and_floored():
    schedule = ExponentialDecay(tau0=2.0, rate=1e-3, min_tau=0.3, every=50)
    values = [schedule(step) for step in range(5_000)]
    assert all(later <= earlier for earlier, later in zip(values, values[1:]))
    assert len(set(values[0:50])) == 1 and values[50] < values[49]
    assert values[0] == 2.0 and min(values) == 0.3
    assert schedule(10**9) == 0.3


def test_exponential_decay_every_one_is_the_unheld_formula():
    schedule = ExponentialDecay(tau0=1.5, rate=3e-3, min_tau=0.1, every=1)
    assert schedule(123) == pytest.approx(1.5 * math.exp(-3e-3 * 123))


def test_cosine_schedule_endpoints_midpoint_and_flat_tail():
    schedule = CosineSchedule(tau0=1.0, min_tau=0.2, total_steps=1_000)
    assert schedule(0) == pytest.approx(1.0)
    assert schedule(500) == pytest.approx(0.6)
    assert schedule(250) == pytest.approx(0.2 + 0.4 * (1 + math.cos(math.pi / 4)))
    assert schedule(1_000) == pytest.approx(0.2) and schedule(5_000) == pytest.approx(0.2)
    values = [schedule(step) for step in range(0, 1_001, 10)]
    assert all(later <= earlier for earlier, later in zip(values, values[1:]))


@pytest.mark.parametrize("schedule", [ConstantSchedule(0.9), ExponentialDecay(1.0, 1e-2, 0.5, 10),
                                      CosineSchedule(1.0, 0.5, 40)])
def test_step_advances_the_counter_and_value_follows(schedule):
    assert isinstance(schedule, TemperatureSchedule)
    assert schedule.value == schedule(0)
    returned = [schedule.step() for _ in range(60)]
    assert schedule.last_step == 60
    assert returned == [schedule(step) for step in range(1, 61)]
    assert schedule.value == schedule(60)


def test_state_dict_round_trip_restores_counter_and_hyperparameters():
    trained = ExponentialDecay(tau0=1.0, rate=2e-3, min_tau=0.4, every=20)
    for _ in range(333):
        trained.step()
    fresh = ExponentialDecay()
    fresh.load_state_dict(trained.state_dict())
    assert fresh.last_step == 333
    assert (fresh.tau0, fresh.rate, fresh.min_tau, fresh.every) == (1.0, 2e-3, 0.4, 20)
    assert fresh.value == trained.value and fresh.step() == trained.step()


def test_loading_another_schedules_state_is_refused():
    with pytest.raises(ValueError, match="ExponentialDecay"):
        ConstantSchedule(1.0).load_state_dict(ExponentialDecay().state_dict())


@pytest.mark.parametrize("make", [
    lambda: ConstantSchedule(0.0),
    lambda: ConstantSchedule(float("nan")),
    lambda: ExponentialDecay(tau0=1.0, rate=-1e-4),
    lambda: ExponentialDecay(tau0=0.5, min_tau=0.6),
    lambda: ExponentialDecay(every=0),
    lambda: CosineSchedule(total_steps=0),
    lambda: CosineSchedule(min_tau=-1.0),
])
def test_invalid_hyperparameters_are_rejected(make):
    with pytest.raises(ValueError):
        make()
