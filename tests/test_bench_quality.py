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


def test_the_joint_recipe_adds_every_understanding_task_and_keeps_the_shapes_tasks():
    from benchmarks.bench_quality import JOINT, SHAPES
    from data_utils.sequences import UNDERSTANDING_TASKS

    weights = {name: float(w) for name, w in (part.split("=") for part in JOINT.task_mix.split(","))}
    shapes_tasks = {part.split("=")[0] for part in SHAPES.task_mix.split(",")}
    assert set(weights) == shapes_tasks | set(UNDERSTANDING_TASKS)
    assert sum(weights.values()) == pytest.approx(1.0) and max(weights, key=weights.get) == "text2image"


def test_the_understanding_table_has_a_row_per_language():
    from benchmarks.bench_quality import understanding_table

    def language(vqa):
        return {"vqa": {"accuracy": vqa, **{f"type_{k}": vqa for k in range(1, 8) if k != 1}},
                "grounding": {"grounded": 0.9, "box_to_phrase": 0.8}, "referring": {"accuracy": 0.7},
                "retrieval": {"text_to_image_r@1": 0.6, "image_to_text_r@1": 0.5}, "attention": {"ratio": 3.25}}

    sections = {}
    for name, vqa in (("en", 1.0), ("zh", 0.25)):
        for section, found in language(vqa).items():
            sections.setdefault(section, {})[name] = found
    rows = understanding_table({"sections": sections}).splitlines()
    assert rows[1].split() == ["en", "1.000", "nan"] + ["1.000"] * 6 + ["0.900", "0.800", "0.700", "0.600", "0.500",
                                                                         "3.25"]
    assert rows[2].split()[:3] == ["zh", "0.250", "nan"] and len(rows) == 3
