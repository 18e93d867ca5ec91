"""The worker's "GPU nearly free" forecast: said once per run, at the pace of its steps so far."""

from __future__ import annotations

from generation.gpu_forecast import GpuEndForecast


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def steps_until_due(forecast: GpuEndForecast, clock: Clock, *, total: int, step_s: float) -> list[int]:
    forecast.began("a")
    due = []
    for step in range(1, total + 1):
        clock.now += step_s
        if forecast.due("a", step, total):
            due.append(step)
    return due


def test_said_once_when_the_steps_left_fit_in_the_lead() -> None:
    clock = Clock()
    # 20 steps of 0.1 s, lead 0.5 s: after step 15 five steps (0.5 s) are left
    assert steps_until_due(GpuEndForecast(0.5, clock), clock, total=20, step_s=0.1) == [15]


def test_slow_steps_make_it_later_and_a_lead_longer_than_the_run_says_it_at_once() -> None:
    clock = Clock()
    assert steps_until_due(GpuEndForecast(0.5, clock), clock, total=20, step_s=0.25) == [18]
    clock = Clock()
    assert steps_until_due(GpuEndForecast(60.0, clock), clock, total=20, step_s=0.1) == [1]


def test_off_with_a_zero_lead_and_silent_for_a_run_never_begun_or_forgotten() -> None:
    clock = Clock()
    assert steps_until_due(GpuEndForecast(0.0, clock), clock, total=20, step_s=0.1) == []
    forecast = GpuEndForecast(0.5, clock)
    assert not forecast.due("never", 19, 20)
    forecast.began("a")
    clock.now += 2.0
    assert forecast.due("a", 19, 20)
    forecast.forget("a")  # a re-run under the same key starts afresh
    forecast.began("a")
    clock.now += 0.1
    assert not forecast.due("a", 1, 20) and not forecast.due("a", 0, 20)
