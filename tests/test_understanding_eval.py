"""evaluate.py's vqa, grounding and referring sections: metrics against hand-computed values with scripted
stand-ins for the pipeline, and one end-to-end run on a tiny checkpoint with location tokens."""
import json

import pytest
from PIL import Image

import evaluate
from data_utils.sequences import GroundedCaption
from data_utils.shapes import ShapeObject, ShapesDataset
from eval_utils.grounding import grounding_section, referring_section
from eval_utils.vqa import held_out_questions, normalise_answer, same_answer, vqa_section
from tests.generation_helpers import write_located_checkpoint

BLANK = Image.new("RGB", (64, 64), "white")
RED_SQUARE = ShapeObject("red", "square", "large", "top left", (2, 2, 22, 22))
BLUE_CIRCLE = ShapeObject("blue", "circle", "small", "bottom right", (40, 40, 50, 50))
GREEN_TRIANGLE = ShapeObject("green", "triangle", "small", "center", (20, 20, 30, 30))


def test_answers_compare_after_trimming_spaces_a_final_full_stop_and_case():
    assert normalise_answer("  Top Left. ") == "top left" and normalise_answer("两个。") == "两个"
    assert same_answer("YES", "yes") and same_answer("一个大的红色圆形 。", "一个大的红色圆形")
    assert not same_answer("yes..", "yes") and not same_answer("no", "not") and not same_answer("top  left", "top left")


def test_vqa_accuracy_per_question_type_and_language():
    # One object: questions 1, 2, 3, 4, 5, 6 once each and 7 twice (its cell and one empty cell): 8 in all.
    # The stand-in answers types 1, 2, 3 and 5 right (decorated as a model might write them), the rest wrong.
    images = {"en": [BLANK], "zh": [BLANK]}
    truth = {language: {qa.question: qa for qa in held_out_questions([[RED_SQUARE]], language, seed=3)[0]}
             for language in ("en", "zh")}

    def answer(given_images, questions):
        assert len(given_images) == len(questions)
        out = []
        for question in questions:
            qa = truth["en"].get(question) or truth["zh"][question]
            right = qa.answer.upper() + ". " if qa.question in truth["en"] else qa.answer + "。"
            out.append(right if qa.kind in (1, 2, 3, 5) else "wrong")
        return out

    section = vqa_section(answer, {lang: (images[lang], [[RED_SQUARE]]) for lang in ("en", "zh")}, seed=3)
    for language in ("en", "zh"):
        found = section.results[language]
        assert found["questions"] == 8 and found["accuracy"] == 0.5
        assert [found[f"type_{k}"] for k in range(1, 8)] == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
        assert found["type_7_questions"] == 2 and found["type_1_questions"] == 1
    assert "type 7" in section.table and section.table.splitlines()[2].startswith("zh")


def test_vqa_questions_are_the_spec_wording_for_the_objects():
    asked = held_out_questions([[RED_SQUARE, BLUE_CIRCLE]], "en", seed=0)[0]
    by_kind = {}
    for qa in asked:
        by_kind.setdefault(qa.kind, []).append((qa.question, qa.answer))
    assert sorted(by_kind[1]) == [("what colour is the circle?", "blue"), ("what colour is the square?", "red")]
    assert ("where is the blue circle?", "bottom right") in by_kind[3]
    assert by_kind[5] == [("how many objects are there?", "two")]
    assert ("what is at the top left?", "a large red square") in by_kind[7] and len(by_kind[7]) == 3


def test_grounded_caption_share_and_box_to_phrase_against_hand_counts():
    captions = {
        # the square named with its exact box (grounded); the circle's box is elsewhere (IoU 0: not grounded)
        0: GroundedCaption("", [("a large red square", (2, 2, 22, 22)), ("a small blue circle", (0, 0, 10, 10))]),
        # the triangle, one pixel off (IoU 81/119: grounded), named twice: the second phrase grounds nothing
        1: GroundedCaption("", [("A small green triangle.", (21, 21, 31, 31)),
                                ("a small green triangle", (20, 20, 30, 30))]),
    }
    images = [Image.new("RGB", (64, 64), "white"), Image.new("RGB", (64, 64), "black")]

    def caption(given):
        return [captions[0] if image.getpixel((0, 0)) == (255, 255, 255) else captions[1] for image in given]

    def phrase_for_box(given, boxes):  # names only the square right
        return ["a large red square" if box == (2, 2, 22, 22) else "a large blue circle" for box in boxes]

    section = grounding_section(caption, phrase_for_box, {"en": (images, [[RED_SQUARE, BLUE_CIRCLE],
                                                                          [GREEN_TRIANGLE]])})
    assert section.results["en"] == pytest.approx({"objects": 3, "grounded": 2 / 3, "phrases": 4,
                                                   "box_to_phrase": 1 / 3})


def test_a_grounded_phrase_must_name_colour_shape_and_size():
    def caption(given):
        return [GroundedCaption("", [("a small red square", (2, 2, 22, 22))])]  # wrong size, right box

    section = grounding_section(caption, lambda images, boxes: ["一个大的红色正方形"] * len(boxes),
                                {"zh": ([BLANK], [[RED_SQUARE]])})
    assert section.results["zh"]["grounded"] == 0.0 and section.results["zh"]["box_to_phrase"] == 1.0


def test_a_phrase_in_either_language_names_the_object():
    """Grounded captions and box to phrase have no words in their prompts: the model picks the language."""
    def caption(given):
        return [GroundedCaption("", [("一个大的红色正方形", (2, 2, 22, 22)), ("a small blue circle", (0, 0, 10, 10))])]

    section = grounding_section(caption, lambda images, boxes: ["一个大的红色正方形", "a small blue circle"],
                                {"en": ([BLANK], [[RED_SQUARE, BLUE_CIRCLE]])})
    assert section.results["en"] == pytest.approx({"objects": 2, "grounded": 1 / 2, "phrases": 2,
                                                   "box_to_phrase": 1.0})


def test_languages_with_the_same_pictures_are_grounded_once():
    calls = []

    def caption(given):
        calls.append(len(given))
        return [GroundedCaption("", [("a large red square", (2, 2, 22, 22))])] * len(given)

    other = Image.new("RGB", (64, 64), "black")
    section = grounding_section(caption, lambda images, boxes: ["a large red square"] * len(boxes),
                                {"en": ([BLANK], [[RED_SQUARE]]), "zh": ([BLANK], [[RED_SQUARE]]),
                                 "other": ([other], [[RED_SQUARE]])})
    assert calls == [1, 1] and section.results["en"] == section.results["zh"] == section.results["other"]


def test_referring_accuracy_at_iou_one_half():
    answers = {  # per expression: the square's boxes exact, the circle's at IoU exactly 0.5 (right),
        "the red square": (2, 2, 22, 22), "the large red square": (2, 2, 22, 22),
        "the square at the top left": (2, 2, 22, 22),
        "the blue circle": (40, 40, 50, 60), "the small blue circle": (40, 40, 50, 60),
        "the circle at the bottom right": (40, 40, 50, 60),
        # the triangle's at IoU 100/210 (wrong), or no box at all (wrong)
        "the green triangle": (20, 20, 30, 41), "the small green triangle": None,
        "the triangle at the center": (20, 20, 30, 41),
    }
    asked = []

    def ground(images, expressions):
        asked.extend(expressions)
        return [answers[e] for e in expressions]

    section = referring_section(ground, {"en": ([BLANK, BLANK], [[RED_SQUARE, BLUE_CIRCLE], [GREEN_TRIANGLE]])})
    assert sorted(asked) == sorted(answers)
    assert section.results["en"] == {"expressions": 9, "accuracy": 6 / 9}


# --- end to end on a tiny checkpoint with location tokens ---------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    shapes = ShapesDataset(seed=0, language="both")
    return write_located_checkpoint(tmp_path_factory.mktemp("undeval"), [shapes.caption(i) for i in range(300)],
                                    vocab_size=400)


def test_evaluate_runs_the_understanding_sections_and_matches_direct_calls(checkpoint, tmp_path, capsys):
    from eval_utils.held_out import language_splits
    from eval_utils.grounding import grounding_accuracy, referring_accuracy, true_objects
    from eval_utils.vqa import vqa_accuracy
    from data_utils.shapes_tasks import shapes_tasks
    from generation.pipeline import Pipeline

    out = tmp_path / "eval.json"
    evaluate.main(["--load", str(checkpoint), "--sections", "vqa,grounding,referring", "--num-prompts", "2",
                   "--language", "both", "--output-json", str(out)])
    stdout = capsys.readouterr().out
    assert "== vqa ==" in stdout and "== grounding ==" in stdout and "== referring ==" in stdout
    sections = json.loads(out.read_text())["sections"]
    assert set(sections) == {"vqa", "grounding", "referring"}
    pipe = Pipeline.from_checkpoint(checkpoint)
    splits = language_splits("shapes", "val", 64, "both", 0, 2)
    assert set(splits) == set(sections["vqa"]) == {"en", "zh"}
    for language, split in splits.items():
        assert sections["vqa"][language] == pytest.approx(vqa_accuracy(
            pipe.answer, split.images, held_out_questions(split.objects, language, 0)), nan_ok=True)
        tasks = [shapes_tasks(own, 64, language, 0, 0) for own in split.objects]
        assert sections["grounding"][language] == pytest.approx(grounding_accuracy(
            pipe.grounded_caption, pipe.phrase_for_box, split.images,
            [true_objects(own, image) for own, image in zip(split.objects, split.images)]))
        assert sections["referring"][language] == pytest.approx(referring_accuracy(
            pipe.ground, split.images, [t.expressions for t in tasks]))
        assert sections["vqa"][language]["questions"] >= 16  # at least 8 questions an item


def test_the_understanding_sections_are_skipped_without_location_tokens(tmp_path, caplog):
    shapes = ShapesDataset(seed=0)
    checkpoint = write_located_checkpoint(tmp_path, [shapes.caption(i) for i in range(200)], vocab_size=300,
                                          location_bins=0)
    out = tmp_path / "eval.json"
    with caplog.at_level("INFO"):
        evaluate.main(["--load", str(checkpoint), "--sections", "vqvae,vqa,referring", "--num-prompts", "2",
                       "--output-json", str(out)])
    assert json.loads(out.read_text())["sections"].keys() == {"vqvae"}
    assert sum("skipping the vqa,referring section(s)" in r.getMessage() for r in caplog.records) == 1


def test_the_understanding_sections_run_at_both_precisions(checkpoint, tmp_path):
    out = tmp_path / "eval.json"
    evaluate.main(["--load", str(checkpoint), "--sections", "vqa,grounding,referring", "--num-prompts", "1",
                   "--precision", "int8", "--against-fp32", "--output-json", str(out)])
    report = json.loads(out.read_text())
    assert set(report["fp32_sections"]) == {"vqa", "grounding", "referring"}
    numbers = report["against_fp32"]["numbers"]
    for key in ("vqa/en/accuracy", "grounding/en/grounded", "grounding/en/box_to_phrase", "referring/en/accuracy"):
        assert numbers[key]["fp32"] == report["fp32_sections"][key.split("/")[0]]["en"][key.split("/")[2]]
        assert numbers[key]["int8"] == report["sections"][key.split("/")[0]]["en"][key.split("/")[2]]
