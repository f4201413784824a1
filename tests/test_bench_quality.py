"""benchmarks/bench_quality.py: the time budget is planned from a plausible per-step time, or refused."""
import pytest

from benchmarks.bench_quality import MAX_INTERVAL_SPREAD, PLAUSIBLE_SECONDS_PER_STEP, WARMUP_INTERVALS, \
    plausible_seconds_per_step
from utils.errors import UserError


def test_warm_up_intervals_are_left_out_and_the_median_kept():
    warm_up = [5.0] * WARMUP_INTERVALS  # slow first intervals (thread pools, data workers starting)
    assert plausible_seconds_per_step(warm_up + [0.30, 0.26, 0.27, 0.29, 0.28]) == pytest.approx(0.28)


@pytest.mark.parametrize("seconds", [PLAUSIBLE_SECONDS_PER_STEP[0] / 2, PLAUSIBLE_SECONDS_PER_STEP[1] * 2])
def test_an_impossible_step_time_is_refused(seconds):
    with pytest.raises(UserError, match="plausible"):
        plausible_seconds_per_step([1.0] * WARMUP_INTERVALS + [seconds] * 3)


def test_disagreeing_intervals_are_refused():
    with pytest.raises(UserError, match="disagree"):
        plausible_seconds_per_step([1.0] * WARMUP_INTERVALS + [0.2, 0.2, 0.2 * MAX_INTERVAL_SPREAD * 1.1])


def test_a_run_too_short_to_time_is_refused():
    with pytest.raises(UserError, match="none after the warm-up"):
        plausible_seconds_per_step([0.2] * WARMUP_INTERVALS)
