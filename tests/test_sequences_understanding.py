"""Understanding tasks: token order of vqa, grounded captions, referring expressions and box-to-phrase, their
prompts, and the parsers that read generated ids back."""
import pytest
import torch

from data_utils import sequences
from data_utils.locations import box_to_ids
from data_utils.text_tokenizer import train_sentencepiece
from data_utils.tokenizer import CommandSegment, LocationSegment, TextSegment, UnifiedTokenizer
from tests.test_sequences import CAPTIONS, CODEBOOK, codes

QUESTIONS = ["what colour is the circle?", "red", "where is the red circle?", "top left", "圆形是什么颜色？", "红色"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    model = train_sentencepiece(CAPTIONS + QUESTIONS * 10, tmp_path_factory.mktemp("sp") / "sp", vocab_size=320)
    return UnifiedTokenizer.from_files(model, CODEBOOK, location_bins=32)


def readable(tok, ids):
    """`describe` of test_sequences, with location tokens as 'L<cell>'."""
    return [f"L{segment.cell}" if isinstance(segment, LocationSegment) else describe_segment(segment)
            for segment in tok.decode(ids)]


def describe_segment(segment):
    if isinstance(segment, TextSegment):
        return segment.text
    if isinstance(segment, CommandSegment):
        return segment.name
    return segment.codes.tolist()


def check_prompt(full, prompt, last):
    assert prompt.ids == full.ids[:len(prompt)] and prompt.ids[-1] == last
    assert full.position_ids == list(range(len(full))) and prompt.position_ids == list(range(len(prompt)))


def test_vqa_order_prompt_and_answer(tok):
    image = codes(4, 0)
    question, answer = tok.encode_text("what colour is the circle?"), tok.encode_text("red")
    full = sequences.vqa(tok, image, 4, question, answer)
    assert readable(tok, full.ids) == ["[MINI]", "[BOI1]", image.tolist(), "[EOI1]", "[QUES]",
                                       "what colour is the circle?", "[ANS]", "red", "[SEP]"]
    prompt = sequences.vqa(tok, image, 4, question)
    check_prompt(full, prompt, tok["[ANS]"])
    assert sequences.parse_answer(tok, full.ids[len(prompt):]) == "red"
    assert sequences.parse_answer(tok, answer) == "red"  # no [SEP]: cut short, still read


def test_referring_and_box_to_phrase(tok):
    image, box = codes(4, 1), [10, 20, 22, 32]
    box_ids = box_to_ids(tok, box, 64, 64)
    expression = tok.encode_text("the red circle")
    full = sequences.referring(tok, image, 4, expression, box_ids)
    assert readable(tok, full.ids) == ["[MINI]", "[BOI1]", image.tolist(), "[EOI1]", "[REF]", "the red circle",
                                       "[BOX]", "L325", "L490", "[SEP]"]
    prompt = sequences.referring(tok, image, 4, expression)
    check_prompt(full, prompt, tok["[BOX]"])
    assert sequences.parse_box(tok, full.ids[len(prompt):], 64, 64) == tuple(box)
    assert sequences.parse_box(tok, full.ids[len(prompt):], 128, 128) == (20, 40, 44, 64)
    assert sequences.parse_box(tok, [box_ids[0], tok["[SEP]"]], 64, 64) is None
    assert sequences.parse_box(tok, expression, 64, 64) is None

    phrase = tok.encode_text("a large red circle")
    full = sequences.box_to_phrase(tok, image, 4, box_ids, phrase)
    assert readable(tok, full.ids)[4:] == ["[BOX]", "L325", "L490", "[PHR]", "a large red circle", "[SEP]"]
    prompt = sequences.box_to_phrase(tok, image, 4, box_ids)
    check_prompt(full, prompt, tok["[PHR]"])
    assert sequences.parse_phrase(tok, full.ids[len(prompt):]) == "a large red circle"
    with pytest.raises(ValueError, match="two location token ids"):
        sequences.referring(tok, image, 4, expression, phrase)


@pytest.mark.parametrize("caption,phrases,joined", [
    ("a large red circle at the top left and a small blue diamond in the center",
     ["a large red circle", "a small blue diamond"],
     ["[PHR]", "a large red circle", "L0", "L33", "at the top left and", "[PHR]", "a small blue diamond",
      "L528", "L561", "in the center", "[SEP]"]),
    ("左上角有一个大的红色圆形，中间有一个小的蓝色菱形", ["一个大的红色圆形", "一个小的蓝色菱形"],
     ["左上角有", "[PHR]", "一个大的红色圆形", "L0", "L33", "，中间有", "[PHR]", "一个小的蓝色菱形", "L528",
      "L561", "[SEP]"]),
])
def test_grounded_caption_round_trip(tok, caption, phrases, joined):
    image, boxes = codes(4, 2), [(0, 0, 4, 4), (32, 32, 36, 36)]
    body = sequences.grounded_caption_ids(tok, caption, [(p, box_to_ids(tok, b, 64, 64)) for p, b in zip(phrases, boxes)])
    full = sequences.grounded_caption(tok, image, 4, body)
    assert readable(tok, full.ids)[4:] == ["[GRND]", *joined]
    prompt = sequences.grounded_caption(tok, image, 4)
    check_prompt(full, prompt, tok["[GRND]"])
    parsed = sequences.parse_grounded_caption(tok, full.ids[len(prompt):], 64, 64)
    assert parsed.objects == list(zip(phrases, boxes))
    assert parsed.text.replace(" ", "") == caption.replace(" ", "")
    # Boxes come back in pixels of whatever image the caption is asked about.
    assert sequences.parse_grounded_caption(tok, body, 128, 128).objects[1] == (phrases[1], (64, 64, 72, 72))


def test_grounded_caption_edge_cases(tok):
    box = box_to_ids(tok, (0, 0, 4, 4), 64, 64)
    # A phrase missing from the caption (or out of order) cannot be grounded.
    assert sequences.grounded_caption_ids(tok, "a red circle", [("a blue square", box)]) is None
    assert sequences.grounded_caption_ids(tok, "a and b", [("b", box), ("a", box)]) is None
    # A generated phrase without its two location tokens stays text but is no object.
    ids = [tok["[PHR]"], *tok.encode_text("a red circle"), box[0], tok["[SEP]"], tok["[PHR]"]]
    parsed = sequences.parse_grounded_caption(tok, ids, 64, 64)
    assert parsed.objects == [] and parsed.text == "a red circle"
    with pytest.raises(ValueError, match="grounded caption holds"):
        sequences.grounded_caption(tok, codes(4, 0), 4, [tok["[BOI1]"]])


@pytest.mark.parametrize("task", sequences.UNDERSTANDING_TASKS)
def test_max_length_bounds_the_longest_sequence(tok, task):
    text = [tok.text_offset + 5] * 8
    box = box_to_ids(tok, (0, 0, 64, 64), 64, 64)
    image = torch.zeros(4, 4, dtype=torch.long)
    body = [tok["[PHR]"], *text[:3], *box, *text[:2]] + [tok["[PHR]"], *text[:1], *box] * 4  # 8 + 16 ids
    built = {"vqa": lambda: sequences.vqa(tok, image, 4, text, text),
             "grounded_caption": lambda: sequences.grounded_caption(tok, image, 4, body),
             "referring": lambda: sequences.referring(tok, image, 4, text, box),
             "box_to_phrase": lambda: sequences.box_to_phrase(tok, image, 4, box, text)}[task]()
    assert len(built) == sequences.max_length(task, 8, 4) == sequences.num_positions(task, 8, 4)


@pytest.mark.parametrize("task", sequences.TURN_TASKS)
def test_turns_repeat_a_task_after_one_image(tok, task):
    text = [tok.text_offset + 5] * 8
    box = box_to_ids(tok, (0, 0, 64, 64), 64, 64)
    image = torch.zeros(4, 4, dtype=torch.long)
    record = (text, text) if task == "vqa" else (text, box)  # as the row's annotations store them
    single = {"vqa": lambda: sequences.vqa(tok, image, 4, text, text),
              "referring": lambda: sequences.referring(tok, image, 4, text, box),
              "box_to_phrase": lambda: sequences.box_to_phrase(tok, image, 4, box, text)}[task]()
    assert sequences.turns(tok, task, image, 4, [record]) == single  # one turn is the one-record sequence
    three = sequences.turns(tok, task, image, 4, [record] * 3)
    image_part = 4 * 4 + 3
    assert three.ids == single.ids + 2 * single.ids[image_part:]
    assert three.position_ids == list(range(len(three)))
    assert len(three) == sequences.max_length(task, 8, 4, turns=3) == sequences.num_positions(task, 8, 4, turns=3)
    with pytest.raises(ValueError, match="no turns"):
        sequences.turns(tok, "grounded_caption", image, 4, [record])
