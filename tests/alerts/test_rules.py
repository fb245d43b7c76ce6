"""The alert rules alone: NaN/Inf loss, loss explosion against the running median, stall."""

from __future__ import annotations

from dpd.alerts.rules import LOSS_EXPLOSION, NAN_LOSS, STALLED, AlertRules, RunWatch

RULES = AlertRules(explosion_factor=10.0, window=20, stall_seconds=60.0)


def feed(watch: RunWatch, values: list[float | None], start: int = 1, t: float = 0.0):
    alerts = []
    for offset, value in enumerate(values):
        alerts += watch.step_loss(start + offset, value, t + offset)
    return alerts


def test_nan_is_raised_once_until_a_finite_loss_comes_back() -> None:
    watch = RunWatch("t", RULES)
    alerts = feed(watch, [0.5, None, None, 0.4, None])
    assert [(a.kind, a.step) for a in alerts] == [(NAN_LOSS, 2), (NAN_LOSS, 5)]
    assert alerts[0].value is None and "step 2" in alerts[0].message


def test_a_loss_far_above_the_median_is_an_explosion() -> None:
    watch = RunWatch("t", RULES)
    assert feed(watch, [0.1] * 9 + [5.0]) == []  # too little history to judge
    watch = RunWatch("t", RULES)
    alerts = feed(watch, [0.1] * 10 + [0.9, 1.2, 1.5, 0.2, 2.0])
    assert [(a.kind, a.step, a.value) for a in alerts] == [
        (LOSS_EXPLOSION, 12, 1.2),  # 1.2 > 10 x 0.1; 0.9 is not
        (LOSS_EXPLOSION, 15, 2.0),  # raised again after coming back under (0.2)
    ]


def test_a_run_without_steps_for_stall_seconds_is_stalled_once() -> None:
    watch = RunWatch("t", RULES)
    assert watch.tick(1000.0) == []  # no step yet: start-up and caching do not count
    watch.step_loss(7, 0.3, 100.0)
    assert watch.tick(159.0) == []
    stalled = watch.tick(161.0)
    assert [(a.kind, a.step) for a in stalled] == [(STALLED, 7)]
    assert watch.tick(500.0) == []
    watch.step_loss(8, 0.3, 501.0)
    assert [a.kind for a in watch.tick(600.0)] == [STALLED]
