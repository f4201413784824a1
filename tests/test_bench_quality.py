"""benchmarks/bench_quality.py: the time budget is planned from a plausible per-step time, or refused."""
import pytest

from benchmarks.bench_quality import MAX_INTERVAL_SPREAD, PLAUSIBLE_SECONDS_PER_STEP, WARMUP_INTERVALS, \
    plausible_seconds_per_step
from utils.errors import UserError


def test_warm_up_intervals_are_left_out_and_the_mean_kept():
    warm_up = [5.0] * WARMUP_INTERVALS  # slow first intervals (thread pools, data workers starting)
    assert plausible_seconds_per_step(warm_up + [0.30, 0.26, 0.27, 0.29, 0.38]) == pytest.approx(0.30)


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


def test_only_the_training_shards_draw_more_two_object_pictures(tmp_path):
    from benchmarks.bench_quality import JOINT, SHAPES, shard_stages

    train, val = shard_stages(tmp_path, tmp_path, "shapes", 64, 100, 10, "both", 1, with_lowres=True,
                              two_object_fraction=SHAPES.two_object_fraction)
    assert train.argv[train.argv.index("--two-object-fraction") + 1] == f"{SHAPES.two_object_fraction:g}"
    assert "--two-object-fraction" not in val.argv  # held-out prompts keep shapes.md's half
    assert JOINT.two_object_fraction == SHAPES.two_object_fraction  # the joint run is compared with the shapes run
    default = shard_stages(tmp_path, tmp_path, "emoji", 64, 100, 10, "en", 1, with_lowres=False)
    assert all("--two-object-fraction" not in stage.argv for stage in default)


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


def test_the_shapes_reports_print_text_to_image_per_language_and_captions_and_super_resolution_once(capsys):
    import argparse

    from benchmarks.bench_quality import print_shapes_reports

    def groups(correct):
        return {name: {"correct": correct} for name in ("1 object", "2 objects", "all")}

    def report(correct, captions=None):
        t2i = {"by_cfg_scale": {"1.5": {"first_candidate": {"groups": groups(correct)},
                                        "judged": {"groups": groups(correct)}}}}
        extra = {} if captions is None else {
            "caption": {"groups": groups(captions), "reranked": {"groups": groups(captions)}},
            "sr": {"psnr": 25.0, "bicubic_psnr": 24.0, "gain_over_bicubic": 1.0, "checker_input": 0.7,
                   "checker_output": 0.8}}
        return {"sections": {"t2i": t2i, **extra}}

    reports = {"en": report(0.9, captions=0.75), "zh": report(0.25)}
    print_shapes_reports(reports, argparse.Namespace(cfg_scales=[1.5], candidates=8, caption_candidates=16))
    lines = capsys.readouterr().out.splitlines()
    zh = lines.index("text-to-image, zh prompts")
    assert [line.split()[-1] for line in lines[zh + 2:zh + 4]] == ["0.250", "0.250"]
    assert [line.split()[-1] for line in lines if line.startswith(("greedy", "best of 16"))] == ["0.750", "0.750"]
    assert sum(line == "super-resolution PSNR 25.00 dB vs bicubic 24.00 dB (+1.00 dB); the checker accepts 0.800 of "
                       "them, 0.700 of their inputs" for line in lines) == 1
