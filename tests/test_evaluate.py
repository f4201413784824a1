"""evaluate.py: known answers of the sections, one end-to-end run checked against direct metric calls, errors."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import evaluate
from data_utils.image_sources import FILES_VAL_FRACTION, in_split, open_dataset
from data_utils.images import pil_to_tensor
from data_utils.shapes import ShapeObject, ShapesDataset
from eval_utils.bits_per_token import bpt_tasks, trained_tasks
from eval_utils.image_quality import fid_section
from eval_utils.inception import InceptionOutputs
from eval_utils.prompt_following import JudgedImages, caption_section, text_to_image_section
from eval_utils.report import flat_scalars
from eval_utils.super_resolution import super_resolution_section
from tests.generation_helpers import tiny_model
from checkpoints.trackers import checkpoint_iteration
from utils.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
NUM_PROMPTS = 8  # val items 0-7 of data seed 0 hold one- and two-object captions


# --- a tiny checkpoint: SentencePiece on shapes captions, untrained VQ-VAE, random transformer, val shards ---
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import preprocess_data
    from data_utils.text_tokenizer import TextTokenizer, train_sentencepiece
    from data_utils.tokenizer import UnifiedTokenizer
    from model.export import save_exported
    from vqvae.api import save_vqvae, vqvae_fingerprint
    from vqvae.config import VQVAEConfig
    from vqvae.model import VQVAE

    folder = tmp_path_factory.mktemp("eval")
    shapes = ShapesDataset(seed=0, language="both")
    # 400 pieces: 256 byte pieces plus whole words, so every shapes caption fits 32 tokens.
    sp_model = train_sentencepiece([shapes.caption(i) for i in range(300)], folder / "tok" / "sp", vocab_size=400)
    torch.manual_seed(0)
    vqvae = VQVAE(VQVAEConfig(codebook_size=16, embed_dim=8, hidden_channels=16, num_res_blocks=0)).eval()
    save_vqvae(vqvae, folder / "vqvae")
    tokenizer = UnifiedTokenizer(TextTokenizer(sp_model), 16)
    metadata = {"tokenizer": tokenizer.describe(),  # what Pipeline.from_checkpoint reads
                "vqvae": {"path": str(folder / "vqvae"), "fingerprint": vqvae_fingerprint(vqvae)},
                "data": {"image_grid": 8, "text_max_tokens": 32, "lowres_grid": 4}}
    save_exported(tiny_model(tokenizer, max_positions=112), folder / "gpt", extra=metadata)
    preprocess_data.main(["--dataset", "shapes", "--split", "val", "--num-items", str(NUM_PROMPTS),
                          "--text-tokenizer", str(sp_model), "--vqvae", str(folder / "vqvae"),
                          "--output", str(folder / "val"), "--with-lowres", "--workers", "0"])
    return folder


def start_cli(*argv) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "evaluate.py"), *map(str, argv)], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def held_out(count: int = 16):
    source = open_dataset("shapes", split="val", num_items=count)
    items = [source.item(i) for i in range(count)]
    return ([item.image for item in items], [item.caption for item in items],
            [[ShapeObject(**obj) for obj in item.metadata["objects"]] for item in items])


# --- known answers, without a model ---------------------------------------------------------------------
def test_ground_truth_images_follow_their_prompts_perfectly():
    images, _, objects = held_out()
    blank = [Image.new("RGB", (64, 64), "white")] * len(images)
    asked = []

    def images_at(scale):
        asked.append(scale)
        return JudgedImages(images, first=blank, candidates=[[empty, image] for empty, image in zip(blank, images)])

    section = text_to_image_section(objects, [1.0, 3.0], images_at, candidates=4)
    assert asked == [1.0, 3.0] and set(section.results["by_cfg_scale"]) == {"1", "3"}
    row = section.results["by_cfg_scale"]["3"]
    assert set(row["judged"]["groups"]) == {"all", "1 object", "2 objects"}
    for group in row["judged"]["groups"].values():
        assert [group[key] for key in ("correct", "objects_right", "colour", "shape", "size", "position")] == [1.0] * 6
    assert row["judged"]["mean_extras"] == 0.0
    assert row["first_candidate"]["groups"]["all"]["correct"] == 0.0  # blank images show nothing
    assert row["any_candidate"] == {"all": 1.0, "1 object": 1.0, "2 objects": 1.0}  # the true image is among them
    assert "cfg scale 3, post-selected of 4" in section.table and "first candidate" in section.table


def test_any_candidate_counts_a_prompt_once_whichever_candidate_is_right():
    from eval_utils.shapes_accuracy import any_correct

    images, _, objects = held_out(6)
    blank = Image.new("RGB", (64, 64), "white")
    shares = any_correct(objects, [[blank, image] if i % 2 else [blank, blank] for i, image in enumerate(images)])
    assert shares["all"] == 0.5 and list(shares)[0] == "all"
    assert sorted(shares) == sorted({"all", *(f"{len(o)} object" + ("s" if len(o) > 1 else "") for o in objects)})
    with pytest.raises(UserError, match="6 prompts but candidates for 5"):
        any_correct(objects, [[blank]] * 5)


def test_caption_section_scores_true_captions_right_and_nonsense_unparsed():
    images, captions, objects = held_out(8)
    exact = caption_section(images, objects, lambda given: captions)
    assert exact.results["groups"]["all"]["correct"] == 1.0 and exact.results["unparsed"] == 0.0
    assert exact.results["examples"] == captions
    nonsense = caption_section(images, objects, lambda given: ["qqq"] * len(given))
    assert nonsense.results["groups"]["all"]["correct"] == 0.0 and nonsense.results["unparsed"] == 1.0


def test_super_resolution_section_compares_with_the_originals_and_bicubic():
    from data_utils.images import downscale
    from eval_utils.psnr import bicubic_upsample

    images, captions, _ = held_out(4)
    seen = []

    def bicubic(lowres, texts):
        seen.append((lowres, texts))
        upsampled = bicubic_upsample(torch.stack([pil_to_tensor(image) for image in lowres]), 2)
        return [Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()) for image in upsampled]

    section = super_resolution_section(images, captions, bicubic)
    lowres, texts = seen[0]
    assert texts == captions and [image.size for image in lowres] == [(32, 32)] * 4
    assert all(np.array_equal(np.asarray(a), np.asarray(downscale(b))) for a, b in zip(lowres, images))
    assert 10 < section.results["bicubic_psnr"] < 60
    assert abs(section.results["gain_over_bicubic"]) < 0.05  # the same images, up to uint8 rounding
    perfect = super_resolution_section(images, captions, lambda lowres, texts: images)
    assert perfect.results["psnr"] == math.inf
    assert "copy_psnr" not in perfect.results
    # The copy baseline, where the model's condition has one: measured like the output, on the same inputs.
    copied = super_resolution_section(images, captions, bicubic, held_out(4)[2],
                                      copy=lambda lowres: bicubic(lowres, captions))
    assert copied.results["copy_psnr"] == copied.results["psnr"] and "condition copied" in copied.table
    assert copied.results["checker_copy"] == copied.results["checker_output"]
    assert "copy_psnr" not in super_resolution_section(images, captions, bicubic, copy=lambda lowres: None).results


class MeanColours(torch.nn.Module):
    """A cheap stand-in for the Inception network: per-channel means and mean squares as pool features."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 5, bias=False)
        torch.nn.init.normal_(self.fc.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, images):
        pool = torch.cat([images.mean(dim=(2, 3)), images.square().mean(dim=(2, 3))], dim=1)
        return InceptionOutputs(pool=pool, logits=pool @ self.fc.weight.T)


def test_fid_section_compares_generated_with_real_features():
    from eval_utils.feature_net import FeatureNet, FeatureNetConfig, features
    from eval_utils.fid import fid_from_features, inception_score

    images, _, _ = held_out(12)
    real = torch.stack([pil_to_tensor(image) for image in images])
    shifted = [Image.fromarray(np.roll(np.asarray(image), 9, axis=(0, 1))) for image in images[::-1]]
    torch.manual_seed(0)
    network, inception = FeatureNet(FeatureNetConfig(label_ids=(1, 2), widths=(4, 8))).eval(), MeanColours()
    section = fid_section(real, [1.0, 2.0], lambda scale: JudgedImages(images if scale == 1.0 else shifted),
                          inception, network)
    same, moved = section.results["by_cfg_scale"]["1"], section.results["by_cfg_scale"]["2"]
    assert same["fid"] < 1e-9 and same["self_fid"] < 1e-9
    generated = torch.stack([pil_to_tensor(image) for image in shifted])
    assert moved["fid"] == pytest.approx(fid_from_features(inception(real).pool, inception(generated).pool))
    assert moved["self_fid"] == pytest.approx(fid_from_features(features(network, real), features(network, generated)))
    probabilities = torch.softmax(inception(generated).logits.double(), dim=-1)
    assert moved["inception_score"] == pytest.approx(inception_score(probabilities)[0])
    assert section.results["real_inception_score"] == pytest.approx(same["inception_score"])
    assert "self-FID network" in section.table


@pytest.mark.parametrize("flags, message", [
    (["--sections", "bpt"], "needs --valid-data"),
    (["--sections", "fid"], "needs --inception-weights"),
    (["--sections", "t2i,sr", "--inception-weights", "w.pth"], "--inception-weights is read only by the fid"),
    (["--candidates", "4"], "needs --post-select"),
    (["--post-select"], "--candidates 2 or more"),
    (["--feature-net-steps", "5"], "only with --train-feature-net"),
    (["--cfg-scale", "-1"], "--cfg-scale must be >= 0"),
    (["--sections", "t2i", "--caption-top-k", "5"], "--caption-top-k is read only by the caption"),
    (["--caption-top-k", "-1"], "--caption-top-k must be >= 0"),
    (["--caption-temperature", "2"], "give --caption-candidates 2 or more"),
    (["--post-selection-score", "caption"], "needs --post-select or --caption-candidates"),
])
def test_contradictory_flags_are_refused_before_anything_loads(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        evaluate.main(["--load", str(tmp_path / "nothing"), "--output-json", str(tmp_path / "e.json"), *flags])


def test_bits_per_token_scores_the_tasks_the_rows_allow_and_the_model_learned():
    with_lowres, without = SimpleNamespace(format=SimpleNamespace(lowres_grid=4, annotation_tokens=0)), \
        SimpleNamespace(format=SimpleNamespace(lowres_grid=None, annotation_tokens=0))
    assert bpt_tasks(with_lowres) == ["text2image", "image2text", "super_resolution"]
    annotated = SimpleNamespace(format=SimpleNamespace(lowres_grid=None, annotation_tokens=512))
    assert bpt_tasks(annotated, ["text2image", "vqa", "referring"]) == ["text2image", "vqa", "referring"]
    assert bpt_tasks(without) == ["text2image", "image2text"]
    assert bpt_tasks(with_lowres, ["image2text", "text2image"]) == ["text2image", "image2text"]
    assert bpt_tasks(without, ["super_resolution"]) == []
    assert trained_tasks({"data": {"image_grid": 8, "tasks": ["text2image"]}}) == ["text2image"]
    assert trained_tasks({"data": {"image_grid": 8}}) is None and trained_tasks({}) is None


def test_default_sections_follow_the_inputs():
    args = evaluate.parse_args(["--load", "x", "--output-json", "e.json"])
    assert evaluate.choose_sections(args) == ["t2i", "caption", "sr", "caption-loss", "vqvae", "retrieval",
                                              "attention", "vqa", "grounding", "referring"]
    args = evaluate.parse_args(["--load", "x", "--output-json", "e.json", "--valid-data", "v",
                                "--feature-net", "f", "--sections", "vqvae,fid,bpt"])
    assert evaluate.choose_sections(args) == ["bpt", "fid", "vqvae"]


@pytest.mark.parametrize("flags", [["--caption-temperature", "1.0"], ["--feature-net-steps", "1000"],
                                   ["--post-selection-score", "agreement"], ["--sections", "vqvae", "--cfg-scale", "1"]])
def test_a_flag_given_at_its_default_value_is_refused_where_nothing_reads_it(flags):
    """The same refusal as for any other value: the one "was it given" mechanism (arguments.given_flags)."""
    args = evaluate.parse_args(["--load", "x", "--output-json", "e.json", *flags])
    with pytest.raises(UserError):
        evaluate.choose_sections(args)


def test_checkpoint_iteration_and_flat_scalars(tmp_path):
    (tmp_path / "run" / "1200").mkdir(parents=True)
    (tmp_path / "run" / "latest_checkpointed_iteration.txt").write_text("1200\n")
    assert checkpoint_iteration(tmp_path / "run") == 1200
    assert checkpoint_iteration(tmp_path / "run" / "1200") == 1200
    assert checkpoint_iteration(tmp_path) is None  # an exported folder has no iteration
    results = {"sr": {"psnr": 20.5, "images": 3}, "t2i": {"by_cfg_scale": {"3": {"ok": True, "correct": 0.5}}}}
    assert flat_scalars(results, "eval") == {"eval/sr/psnr": 20.5, "eval/sr/images": 3.0,
                                             "eval/t2i/by_cfg_scale/3/correct": 0.5}


# --- the command end to end on a tiny checkpoint ----------------------------------------------------------
def sequence_bits(model, tokenizer, rows, task) -> tuple[float, int]:
    """Summed next-token nats and count over the non-[PAD] targets of every row as `task`, by hand."""
    from data_utils import sequences

    total, count = 0.0, 0
    for index in range(len(rows)):
        row = rows[index]
        if task == "text2image":
            seq = sequences.text2image(tokenizer, row.text_ids, 8, torch.from_numpy(row.image))
        elif task == "image2text":
            seq = sequences.image2text(tokenizer, torch.from_numpy(row.image), 8, row.text_ids)
        else:
            seq = sequences.super_resolution(tokenizer, row.text_ids, torch.from_numpy(row.lowres), 4, 8,
                                             torch.from_numpy(row.image))
        ids, positions = torch.tensor([seq.ids]), torch.tensor([seq.position_ids])
        logits = model(ids[:, :-1], positions[:, :-1])
        total += float(F.cross_entropy(logits[0].double(), ids[0, 1:], reduction="sum"))
        count += len(seq.ids) - 1
    return total, count


def test_evaluate_end_to_end_matches_direct_metric_calls(checkpoint, tmp_path):
    from data_utils.images import downscale
    from data_utils.shards import ShardedRows
    from eval_utils.attention_in_box import attention_in_box
    from eval_utils.caption_loss import caption_loss_alignment
    from eval_utils.feature_net import feature_net_fingerprint, features, load_feature_net
    from eval_utils.fid import fid_from_features
    from eval_utils.psnr import bicubic_upsample, mean_psnr
    from eval_utils.retrieval import distinct_pairs, recalls
    from eval_utils.shapes_accuracy import image_accuracy
    from eval_utils.vqvae_reconstruction import reconstruct
    from generation.pipeline import Pipeline
    from vqvae.api import vqvae_fingerprint

    out = tmp_path / "eval.json"
    command = ["--load", checkpoint / "gpt", "--num-prompts", NUM_PROMPTS, "--valid-data", checkpoint / "val",
               "--cfg-scale", 1, 3, "--candidates", 2, "--post-select", "--train-feature-net", tmp_path / "selffid",
               "--feature-net-steps", 3, "--feature-net-items", 16, "--seed", 5, "--caption-candidates", 3,
               "--caption-temperature", 1.5, "--retrieval-pairs", 6, "--output-json", out,
               "--tensorboard-dir", tmp_path / "tb"]
    cli = start_cli(*command)
    stdout, stderr = cli.communicate(timeout=300)
    assert cli.returncode == 0, stderr
    ran = [name for name in evaluate.SECTIONS if name not in evaluate.UNDERSTANDING_SECTIONS]  # no location tokens
    for name in ran:
        assert f"== {name} ==" in stdout
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert report["complete"] and set(sections) == set(ran) and report["seed"] == 5
    assert report["command"].startswith("python evaluate.py --load ") and "--post-select" in report["command"]
    assert report["dataset"]["used"] == NUM_PROMPTS and report["dataset"]["split"] == "val"
    assert report["dataset"]["skipped"] == []
    assert list(Path(tmp_path / "tb").glob("events.out.tfevents.*"))

    pipe = Pipeline.from_checkpoint(checkpoint / "gpt")
    assert report["checkpoint"]["vqvae"]["fingerprint"] == vqvae_fingerprint(pipe.vqvae)
    assert report["checkpoint"]["tokenizer"]["fingerprint"] == pipe.tokenizer.fingerprint()
    images, captions, objects = held_out(NUM_PROMPTS)
    truth = torch.stack([pil_to_tensor(image) for image in images])

    # t2i: the same seed gives the same candidates, and post-selection picks the best caption score.
    t2i = sections["t2i"]["by_cfg_scale"]
    assert set(t2i) == {"1", "3"} and t2i["1"]["judged"]["groups"]["all"]["prompts"] == NUM_PROMPTS
    results = pipe.text2image(captions, n=2, seed=5, cfg_scale=1.0)
    first = image_accuracy(zip(objects, [r.images[0] for r in results]))
    assert t2i["1"]["first_candidate"] == json.loads(json.dumps(first.to_dict()))
    judged = [r.images[int(pipe.rerank_codes(r.prompt, r.codes).scores.argmax())] for r in results]
    assert t2i["1"]["judged"] == json.loads(json.dumps(image_accuracy(zip(objects, judged)).to_dict()))
    for row in t2i.values():
        assert all(0.0 <= value <= 1.0 for group in row["judged"]["groups"].values()
                   for key, value in group.items() if key not in ("prompts", "objects"))

    caption = sections["caption"]  # greedy by default: the model's most likely caption of each image
    assert caption["examples"] == pipe.caption(images, seed=5, max_tokens=pipe.geometry.text_max_tokens, top_k=1)
    assert 0.0 <= caption["unparsed"] <= 1.0
    assert caption["reranked"]["examples"] == pipe.caption(images, seed=5, max_tokens=pipe.geometry.text_max_tokens,
                                                           top_k=0, temperature=1.5, candidates=3)

    sr = sections["sr"]
    lowres = [downscale(image) for image in images]
    bicubic = mean_psnr(bicubic_upsample(torch.stack([pil_to_tensor(image) for image in lowres]), 2), truth)
    assert sr["bicubic_psnr"] == pytest.approx(bicubic, abs=1e-9)
    restored = torch.stack([pil_to_tensor(image) for image in pipe.super_resolve(lowres, captions, seed=5)])
    assert sr["psnr"] == pytest.approx(mean_psnr(restored, truth), abs=1e-9)
    assert sr["gain_over_bicubic"] == pytest.approx(sr["psnr"] - sr["bicubic_psnr"])

    # bpt: every row scored as each task; overall bits = mean cross-entropy over non-[PAD] targets / ln 2.
    bpt = sections["bpt"]
    assert bpt["rows"] == NUM_PROMPTS and set(bpt["by_task"]) == {"text2image", "image2text", "super_resolution"}
    rows = ShardedRows(checkpoint / "val")
    with torch.no_grad():
        parts = [sequence_bits(pipe.model, pipe.tokenizer, rows, task) for task in bpt["by_task"]]
    nats, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
    assert bpt["image_tokens"] + bpt["text_tokens"] == count
    assert bpt["bits"] == pytest.approx(nats / count / math.log(2), rel=1e-5)

    expected_loss = caption_loss_alignment(pipe.model, pipe.tokenizer, pipe.geometry, pipe.encode_images(truth),
                                           captions)
    assert sections["caption-loss"]["caption_loss"] == pytest.approx(expected_loss.matched, rel=1e-6)
    assert sections["caption-loss"]["caption_loss_gap"] == pytest.approx(expected_loss.gap, abs=1e-6)

    network = load_feature_net(tmp_path / "selffid")  # saved by --train-feature-net
    fid = sections["fid"]
    assert fid["feature_net_fingerprint"] == feature_net_fingerprint(network)
    generated = torch.stack([pil_to_tensor(image) for image in judged])
    expected_fid = fid_from_features(features(network, truth), features(network, generated))
    assert fid["by_cfg_scale"]["1"]["self_fid"] == pytest.approx(expected_fid, rel=1e-6)

    _, vq_report = reconstruct(pipe.vqvae, np.stack([np.asarray(image) for image in images]))
    assert sections["vqvae"]["psnr"] == pytest.approx(vq_report.psnr)
    assert 1.0 <= sections["vqvae"]["perplexity"] <= 16 and 0.0 < sections["vqvae"]["codes_used"] <= 1.0

    # retrieval: the first 6 val pairs with different captions, each caption against each image.
    pair_images, pair_captions = distinct_pairs(*held_out(24)[:2], 6)
    assert sections["retrieval"]["en"] == {"pairs": 6, **recalls(pipe.retrieval_scores(pair_images, pair_captions))}

    maps = pipe.attention_maps(images, captions)
    texts = [pipe.tokenizer.decode_text(pipe.tokenizer.encode_text(caption)) for caption in captions]
    assert sections["attention"]["en"] == pytest.approx(attention_in_box(maps, objects, texts, "en", 64, 8))


def val_file_names(count: int) -> list[str]:
    """Image names that the files source puts in its val split (by the stable hash of the path)."""
    names = (f"img{i:04d}.png" for i in range(100_000))
    return [name for name in names if in_split(name, "val", FILES_VAL_FRACTION)][:count]


def test_bad_inputs_are_one_line_errors(checkpoint, tmp_path):
    missing_checkpoint = start_cli("--load", tmp_path / "no_such_checkpoint", "--output-json", tmp_path / "a.json")
    missing_weights = start_cli("--load", checkpoint / "gpt", "--inception-weights", tmp_path / "pt_inception.pth",
                                "--output-json", tmp_path / "b.json")
    for cli, expected in ((missing_checkpoint, "model checkpoint not found"),
                          (missing_weights, "Inception weights file not found")):
        _, stderr = cli.communicate(timeout=120)
        assert cli.returncode == 2
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in val_file_names(3):
        Image.new("RGB", (64, 64), "red").save(folder / name)
        (folder / name).with_suffix(".txt").write_text("a red picture", encoding="utf-8")
    with pytest.raises(UserError, match="need shapes metadata"):
        evaluate.main(["--load", str(checkpoint / "gpt"), "--dataset", str(folder), "--sections", "t2i,vqvae",
                       "--output-json", str(tmp_path / "c.json")])
