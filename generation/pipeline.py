"""`Pipeline`: the Python API of every inference task, loaded once and called many times.

    pipe = Pipeline.from_checkpoint("runs/gpt")            # tokenizer and VQ-VAE from its metadata
    results = pipe.text2image(["a large red circle at the top left"], n=4, seed=0, cfg_scale=3.0)
    results[0].images[0].save("circle.png")
    captions = pipe.caption(results[0].images)
    ranking = pipe.rerank("a large red circle at the top left", results[0].images)
    big = pipe.super_resolve([results[0].images[ranking.order[0]]], "a large red circle at the top left")
    pipe.answer(images, "what colour is the circle?")    # a model trained with the understanding tasks
    pipe.grounded_caption(images)[0].objects             # [(phrase, box in pixels of the input image)]
    pipe.ground(images, "the red circle")                # a box per image
    pipe.phrase_for_box(images, [(1, 1, 21, 21)])        # a phrase per image
    scores = pipe.retrieval_scores(results[0].images, ["a large red circle at the top left", "a small blue square"])
    words = pipe.attention_map(results[0].images[0], "a large red circle at the top left")

Images go in and come out as PIL images (tensors `[B, 3, H, W]` in [0, 1] are accepted too); every
task also has a code-level twin in `generation.tasks` for callers that already hold VQ-VAE codes.
`generate_samples.py` is a thin command line over this class.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import torch
from PIL import Image

from data_utils import sequences
from data_utils.images import pil_to_tensor, tensor_to_pil
from data_utils.locations import Box, box_to_ids
from data_utils.sr_windows import condition_grid
from data_utils.tokenizer import UnifiedTokenizer
from fp16 import PRECISIONS, inference_autocast, quantize_linear_layers, refuse_unless_cpu
from generation import attention_maps, retrieval, scoring, tasks, understanding
from generation.attention_maps import WordAttention
from generation.decoding import DEFAULT_MAX_BATCH_ROWS
from generation.sampling import SamplingSettings
from generation.scoring import POST_SELECTION_SCORES
from generation.tasks import Geometry
from utils.errors import UserError

DEFAULT_MAX_CAPTION_TOKENS = 32

ImagesLike = Sequence[Image.Image] | torch.Tensor


@dataclass
class GeneratedImages:
    """The images of one prompt, with what it takes to make each one again."""

    prompt: str
    images: list[Image.Image]
    seeds: list[int]
    codes: torch.Tensor                      # [n, grid, grid]
    scores: torch.Tensor | None = None       # post-selection scores, when reranked


@dataclass
class SelectedImage:
    """Text -> candidates -> post-selection -> super-resolution of the best candidate."""

    candidates: GeneratedImages              # with `scores` filled in
    best: int                                # index of the chosen candidate
    upscaled: Image.Image                    # the best candidate at twice its side


@dataclass(frozen=True)
class CaptionCandidate:
    """One sampled caption of an image: its text, the seed that samples it again (`caption` with that
    seed and one candidate), and its `match_scores` score (None for an empty caption, which says
    nothing and ranks last)."""

    text: str
    seed: int
    score: float | None


@dataclass
class Ranking:
    """Post-selection of candidate images for one text: scores in input order, `order` best first."""

    scores: torch.Tensor                     # [N], `Pipeline.match_scores`; higher is better
    order: list[int] = field(default_factory=list)


class Pipeline:
    """A loaded model (plus tokenizer and VQ-VAE) and every inference task over it.

    `post_selection` is how a text and an image are matched, in post-selection and in caption
    reranking: "agreement" (both directions, the default) or "caption" (CogView's caption likelihood).
    `caption_model` scores the image-to-text direction (CogView used a separately fine-tuned captioner);
    it defaults to `model`, which learned image-to-text by token order. `max_batch_rows` is the most
    sequences one forward runs (guided sampling counts two per image); out-of-memory halves it.
    `precision` "int8" quantises the linear layers of `model` and `caption_model` here, once (copies:
    the models given stay fp32); the others are applied by autocast at every call.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: UnifiedTokenizer, vqvae: torch.nn.Module | None,
                 geometry: Geometry, caption_model: torch.nn.Module | None = None,
                 max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS, precision: str = "fp32",
                 post_selection: str = "agreement"):
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if post_selection not in POST_SELECTION_SCORES:
            raise UserError(f"unknown post-selection score {post_selection!r}; choose one of "
                            f"{', '.join(POST_SELECTION_SCORES)}")
        self.precision = precision
        self.post_selection = post_selection
        self.model = model.eval()
        self.caption_model = (caption_model or model).eval()
        if precision == "int8":
            self.model = quantize_linear_layers(model)
            self.caption_model = self.model if caption_model is None else quantize_linear_layers(caption_model)
        self.tokenizer = tokenizer
        self.vqvae = vqvae
        self.geometry = geometry
        self.max_batch_rows = max_batch_rows

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, vqvae: str | os.PathLike | None = None,
                        text_tokenizer: str | os.PathLike | None = None, device: str | torch.device | None = "cpu",
                        precision: str = "fp32", caption_model: str | os.PathLike | None = None,
                        max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS, post_selection: str = "agreement",
                        layernorm_order: str | None = None, pb_relax: bool | None = None,
                        pb_relax_alpha: float | None = None,
                        adapters: Sequence[str | os.PathLike] = ()) -> "Pipeline":
        """Load a checkpoint (any layout `model.checkpoint.load_model_for_inference` reads) with the
        tokenizer and VQ-VAE its metadata names; `vqvae` / `text_tokenizer` override those paths.
        `device=None` takes the GPU when there is one. `precision` ("fp32", "bf16", "fp16") is the
        transformer's compute precision: fp32 weights under autocast, as training's checkpoints hold;
        "int8" (CPU only) quantises its linear layers once, at load (`fp16.int8`).
        `layernorm_order`, `pb_relax`, `pb_relax_alpha`: None takes the checkpoint's (model_config.json, or
        what CogView's release implies); a value contradicting model_config.json is an error.
        `adapters`: folders written by `finetune_subject.py`, folded into the model (several subjects at once)."""
        from generation.loading import load_components, resolve_device

        if precision == "int8":
            refuse_unless_cpu(resolve_device(device))  # before the checkpoint loads, not after
        parts = load_components(path, vqvae=vqvae, text_tokenizer=text_tokenizer, device=device,
                                caption_model=caption_model,
                                model_settings=dict(layernorm_order=layernorm_order, pb_relax=pb_relax,
                                                    pb_relax_alpha=pb_relax_alpha),
                                adapters=adapters)
        return cls(parts.model, parts.tokenizer, parts.vqvae, parts.geometry, parts.caption_model, max_batch_rows,
                   precision, post_selection)

    def _autocast(self):
        """The transformer runs in `self.precision`; the VQ-VAE always in fp32 (outside this)."""
        return inference_autocast(next(self.model.parameters()).device, self.precision)

    # --- images <-> codes ---------------------------------------------------------------------------
    def _require_vqvae(self) -> torch.nn.Module:
        if self.vqvae is None:
            raise UserError("this pipeline has no VQ-VAE; give one (--vqvae) to turn images into codes and back")
        return self.vqvae

    def image_size(self, grid: int) -> int:
        return grid * self._require_vqvae().config.downsample

    def encode_images(self, images: ImagesLike, grid: int | None = None) -> torch.Tensor:
        """Images (resized to the model's image size, or to `grid` codes a side) -> codes `[N, g, g]`."""
        from vqvae.api import img2code

        grid = grid or self.geometry.image_grid
        size = self.image_size(grid)
        if isinstance(images, torch.Tensor):
            batch = images.float()
            if batch.shape[-2:] != (size, size):
                batch = torch.nn.functional.interpolate(batch, size=(size, size), mode="bicubic",
                                                        align_corners=False).clamp(0, 1)
        else:
            if not images:
                raise UserError("no images given")
            batch = torch.stack([pil_to_tensor(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
                                               if image.size != (size, size) else image) for image in images])
        return img2code(self._require_vqvae(), batch)

    def decode_codes(self, codes: torch.Tensor) -> list[Image.Image]:
        from vqvae.api import code2img

        return [tensor_to_pil(image) for image in code2img(self._require_vqvae(), codes)]

    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode_text(text, self.geometry.text_max_tokens)

    # --- tasks --------------------------------------------------------------------------------------
    def text2image_codes(self, prompts: Sequence[str], n: int, seed: int, settings: SamplingSettings,
                         negative_prompt: str | None = None) -> torch.Tensor:
        """Code grids `[P, n, grid, grid]` for each prompt (image j of every prompt: seed `seed + j`)."""
        negative = self._text_ids(negative_prompt) if negative_prompt else None
        with self._autocast():
            return tasks.generate_image_codes(self.model, self.tokenizer, self.geometry,
                                              [self._text_ids(p) for p in prompts], n, seed, settings,
                                              self.max_batch_rows, negative_ids=negative)

    def text2image(self, prompts: str | Sequence[str], n: int = 4, seed: int = 0, cfg_scale: float = 1.0,
                   negative_prompt: str | None = None, top_k: int = 200, top_p: float = 1.0,
                   temperature: float = 1.0) -> list[GeneratedImages]:
        """`n` images per prompt. Guidance (`cfg_scale != 1`) contrasts each prompt with the empty
        prompt, or with `negative_prompt`; `cfg_scale = 1` is plain sampling."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        settings = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale)
        codes = self.text2image_codes(prompts, n, seed, settings, negative_prompt)
        return [GeneratedImages(prompt, self.decode_codes(prompt_codes), [seed + j for j in range(n)], prompt_codes)
                for prompt, prompt_codes in zip(prompts, codes)]

    def caption(self, images: ImagesLike, seed: int = 0, max_tokens: int = DEFAULT_MAX_CAPTION_TOKENS,
                top_k: int = 200, top_p: float = 1.0, temperature: float = 1.0, candidates: int = 1) -> list[str]:
        """A caption per image (image i samples with seed `seed + i`); `top_k=1` is greedy. With
        `candidates > 1` each image keeps, of that many sampled captions, the one that agrees best with it
        (`match_scores`), as post-selection keeps the image that agrees best with a text."""
        return self.caption_codes(self.encode_images(images), seed, max_tokens,
                                  SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p), candidates)

    def caption_codes(self, codes: torch.Tensor, seed: int, max_tokens: int, settings: SamplingSettings,
                      candidates: int = 1) -> list[str]:
        """`caption` for code grids `[N, grid, grid]`."""
        texts = self._sample_captions(codes, seed, max_tokens, settings, candidates)
        if candidates == 1:
            return [self.tokenizer.decode_text(own[0]) for own in texts]
        scores = self._candidate_scores(codes, texts)
        # The first of equal scores wins; an empty text (score None) never wins over a non-empty one.
        return [self.tokenizer.decode_text(max(zip(own, own_scores), key=lambda pair: _rank_key(pair[1]))[0])
                for own, own_scores in zip(texts, scores)]

    def caption_candidates(self, images: ImagesLike, candidates: int, seed: int = 0,
                           max_tokens: int = DEFAULT_MAX_CAPTION_TOKENS, top_k: int = 200, top_p: float = 1.0,
                           temperature: float = 1.0) -> list[list[CaptionCandidate]]:
        """Every one of the `candidates` sampled captions of each image, with its seed and score, best
        first: what `caption(..., candidates=N)` chooses from (its choice is the first of each list)."""
        codes = self.encode_images(images)
        settings = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p)
        texts = self._sample_captions(codes, seed, max_tokens, settings, candidates)
        scores = self._candidate_scores(codes, texts)
        ranked = []
        for i, (own, own_scores) in enumerate(zip(texts, scores)):
            entries = [CaptionCandidate(self.tokenizer.decode_text(ids), tasks.candidate_seed(seed + i, j), score)
                       for j, (ids, score) in enumerate(zip(own, own_scores))]
            ranked.append(sorted(entries, key=lambda entry: _rank_key(entry.score), reverse=True))
        return ranked

    def _sample_captions(self, codes: torch.Tensor, seed: int, max_tokens: int, settings: SamplingSettings,
                         candidates: int) -> list[list[list[int]]]:
        if candidates > 1 and self.post_selection == "agreement" and max_tokens > self.geometry.text_max_tokens:
            raise UserError(f"reranked captions are scored as text-to-image prompts, which hold at most "
                            f"{self.geometry.text_max_tokens} text tokens; give --max-caption-tokens "
                            f"{self.geometry.text_max_tokens} or less")
        with self._autocast():
            return tasks.caption_candidates(self.model, self.tokenizer, self.geometry, codes, seed, settings,
                                            max_tokens, self.max_batch_rows, candidates)

    def _candidate_scores(self, codes: torch.Tensor, texts: list[list[list[int]]]) -> list[list[float | None]]:
        """`match_scores` of each image with each of its candidate texts (None for an empty text). Each
        distinct (image, text) pair is scored once."""
        pairs = sorted({(i, tuple(text)) for i, own in enumerate(texts) for text in own if text})
        scores = self.match_scores(codes[[i for i, _ in pairs]], [list(text) for _, text in pairs]) if pairs else []
        score_of = {pair: float(score) for pair, score in zip(pairs, scores)}
        return [[score_of.get((i, tuple(text))) for text in own] for i, own in enumerate(texts)]

    def match_scores(self, codes: torch.Tensor, text_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """How well each code grid and its own text agree, by `self.post_selection`: "agreement" (both
        directions) or "caption" (CogView's caption likelihood); `scoring.match_scores`."""
        with self._autocast():
            return scoring.match_scores(self.post_selection, self.model, self.caption_model, self.tokenizer,
                                        self.geometry, codes, text_ids, self.max_batch_rows)

    def rerank_codes(self, text: str, codes: torch.Tensor) -> Ranking:
        scores = self.match_scores(codes, [self._text_ids(text)] * len(codes))
        return Ranking(scores, sorted(range(len(scores)), key=lambda i: -float(scores[i])))

    def rerank(self, text: str, images: ImagesLike) -> Ranking:
        """Post-selection: how well each image agrees with `text` (`match_scores`)."""
        return self.rerank_codes(text, self.encode_images(images))

    def retrieval_scores(self, images: ImagesLike, texts: Sequence[str]) -> torch.Tensor:
        """How well every text matches every image, `[n_texts, n_images]` float64, higher is better:
        ln P(text | image) by the caption model, normalised per text over these images
        (`retrieval.retrieval_scores`). `retrieval.ranked(scores)` ranks each text's images,
        `retrieval.ranked(scores.T)` each image's texts."""
        codes = self.encode_images(images)
        with self._autocast():
            return retrieval.retrieval_scores(self.caption_model, self.tokenizer, self.geometry, codes,
                                              [self._text_ids(text) for text in texts], self.max_batch_rows)

    def attention_maps(self, images: ImagesLike, texts: Sequence[str]) -> list[list[WordAttention]]:
        """For each image with its own text: per word of the text, which image codes it attends to
        (averaged over heads and layers of the caption model, image-then-text order;
        `generation.attention_maps`)."""
        if len(texts) != len(images):
            raise UserError(f"{len(images)} images but {len(texts)} texts for attention maps")
        codes = self.encode_images(images)
        text_ids = [self._text_ids(text) for text in texts]
        with self._autocast():
            pieces = attention_maps.piece_attention(self.caption_model, self.tokenizer, self.geometry, codes,
                                                    text_ids, self.max_batch_rows)
        return [attention_maps.word_attention(self.tokenizer, ids, own, self.geometry.image_grid)
                for ids, own in zip(text_ids, pieces)]

    def attention_map(self, image: Image.Image, text: str) -> list[WordAttention]:
        """`attention_maps` of one image and its text."""
        return self.attention_maps([image], [text])[0]

    def super_resolve_codes(self, codes: torch.Tensor, texts: Sequence[str], seed: int,
                            settings: SamplingSettings) -> torch.Tensor:
        """Image code grids `[N, s, s]` (s: half the model's grid, or its grid to magnify) -> `[N, 2s, 2s]`.
        A model with the "upsampled" condition reads the images decoded and upsampled to twice their side
        (`sr_windows.condition_image`), encoded again, as `super_resolve` reads pixels."""
        condition = self.geometry.sr_condition
        if condition != "lowres":
            codes = self.encode_images(self.decode_codes(codes), condition_grid(condition, codes.shape[1]))
        return self._super_resolve_conditions(codes, texts, seed, settings)

    def _super_resolve_conditions(self, codes: torch.Tensor, texts: Sequence[str], seed: int,
                                  settings: SamplingSettings) -> torch.Tensor:
        with self._autocast():
            return tasks.super_resolve_codes(self.model, self.tokenizer, self.geometry, codes,
                                             [self._text_ids(t) for t in texts], seed, settings, self.max_batch_rows)

    def super_resolve(self, images: ImagesLike, text: str | Sequence[str], seed: int = 0, top_k: int | None = None,
                      top_p: float | None = None, temperature: float | None = None) -> list[Image.Image]:
        """Each image at twice its side, conditioned on its text (one text for all, or one each).

        An image exactly at the trained low-resolution size takes one pass; any other is resized to
        the model's image size and magnified with 9 overlapping windows (`tasks.magnify_windows`), which
        a model that did not train them refuses (`tasks.check_magnifies`). A model with the "upsampled"
        condition reads the image bicubic-resized to twice that size instead (`sr_windows.condition_grid`).
        Sampling settings left None take super-resolution's default, greedy (`tasks.SUPER_RESOLUTION_SAMPLING`).
        """
        codes = self._condition_codes(images)
        texts = [text] * len(codes) if isinstance(text, str) else list(text)
        if len(texts) != len(codes):
            raise UserError(f"{len(codes)} images but {len(texts)} texts for super-resolution")
        settings = tasks.super_resolution_settings(top_k=top_k, top_p=top_p, temperature=temperature)
        return self.decode_codes(self._super_resolve_conditions(codes, texts, seed, settings))

    def super_resolution_copy(self, images: ImagesLike) -> list[Image.Image] | None:
        """What `super_resolve` would return if the model only copied its condition: the condition's codes
        decoded. The baseline that tells whether super-resolution learned anything beyond reading its input;
        only the "upsampled" condition has one (the "lowres" condition's codes are half the target's grid)."""
        if self.geometry.sr_condition == "lowres":
            return None
        return self.decode_codes(self._condition_codes(images))

    def text2image_select_upscale(self, prompts: str | Sequence[str], n: int = 8, seed: int = 0,
                                  cfg_scale: float = 1.0, negative_prompt: str | None = None, top_k: int = 200,
                                  top_p: float = 1.0, temperature: float = 1.0,
                                  upscale_settings: SamplingSettings = tasks.SUPER_RESOLUTION_SAMPLING
                                  ) -> list[SelectedImage]:
        """CogView's full recipe in one call: `n` candidates per prompt, ranked by post-selection, and
        the best one magnified to twice its side with `upscale_settings` (super-resolution's default,
        greedy; the best candidate j, seed `seed + j`, magnifies with that seed).

        Only a model that trained the magnifying windows can do the last step: any other is refused in
        one line before anything is sampled (`tasks.check_magnifies`), never answered with garbage."""
        tasks.check_magnifies(self.geometry)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        settings = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale)
        all_codes = self.text2image_codes(prompts, n, seed, settings, negative_prompt)
        results = []
        for prompt, codes in zip(prompts, all_codes):
            ranking = self.rerank_codes(prompt, codes)
            best = ranking.order[0]
            upscaled = self.super_resolve_codes(codes[best:best + 1], [prompt], seed + best, upscale_settings)
            candidates = GeneratedImages(prompt, self.decode_codes(codes), [seed + j for j in range(n)], codes,
                                         ranking.scores)
            results.append(SelectedImage(candidates, best, self.decode_codes(upscaled)[0]))
        return results

    # --- understanding tasks (greedy; boxes in pixels of each input image) ------------------------------
    def _sizes(self, images: ImagesLike) -> list[tuple[int, int]]:
        """(width, height) of each input image: boxes are read and written in its pixels (the model sees it
        resized to its square, and location cells are fractions of the image, so they map back exactly)."""
        if isinstance(images, torch.Tensor):
            return [(int(images.shape[-1]), int(images.shape[-2]))] * len(images)
        return [image.size for image in images]

    @staticmethod
    def _one_each(values, count: int, what: str) -> list:
        values = [values] * count if isinstance(values, str) else list(values)
        if len(values) != count:
            raise UserError(f"{count} images but {len(values)} {what}")
        return values

    def answer(self, images: ImagesLike, questions: str | Sequence[str], max_tokens: int | None = None) -> list[str]:
        """The answer to each image's question (one question for all, or one each); an answer holds at most
        `max_tokens` text tokens (default: the text budget the model was trained with)."""
        max_tokens = max_tokens or self.geometry.text_max_tokens
        codes = self.encode_images(images)
        question_ids = [self._text_ids(q) for q in self._one_each(questions, len(codes), "questions")]
        with self._autocast():
            answers = understanding.answer_ids(self.model, self.tokenizer, self.geometry, codes, question_ids,
                                               max_tokens, self.max_batch_rows)
        return [sequences.parse_answer(self.tokenizer, ids) for ids in answers]

    def grounded_caption(self, images: ImagesLike, max_tokens: int | None = None) -> list[sequences.GroundedCaption]:
        """Each image's caption with its object phrases and their boxes; `max_tokens` defaults to the text
        budget plus room for the phrases' markers."""
        codes = self.encode_images(images)
        max_tokens = max_tokens or self.geometry.text_max_tokens + sequences.GROUNDED_MARKER_BUDGET
        with self._autocast():
            generated = understanding.grounded_caption_ids(self.model, self.tokenizer, self.geometry, codes,
                                                           max_tokens, self.max_batch_rows)
        return [sequences.parse_grounded_caption(self.tokenizer, ids, width, height)
                for ids, (width, height) in zip(generated, self._sizes(images))]

    def ground(self, images: ImagesLike, expressions: str | Sequence[str]) -> list[Box | None]:
        """The box each image's referring expression names (one expression for all, or one each)."""
        codes = self.encode_images(images)
        expression_ids = [self._text_ids(e) for e in self._one_each(expressions, len(codes), "expressions")]
        with self._autocast():
            generated = understanding.referring_box_ids(self.model, self.tokenizer, self.geometry, codes,
                                                        expression_ids, self.max_batch_rows)
        return [sequences.parse_box(self.tokenizer, ids, width, height)
                for ids, (width, height) in zip(generated, self._sizes(images))]

    def phrase_for_box(self, images: ImagesLike, boxes: Sequence[Box], max_tokens: int | None = None) -> list[str]:
        """The phrase naming each image's box ([x0, y0, x1, y1] in pixels of that image, one box each), of at
        most `max_tokens` text tokens (default: the text budget)."""
        max_tokens = max_tokens or self.geometry.text_max_tokens
        sizes = self._sizes(images)
        if len(boxes) != len(sizes):
            raise UserError(f"{len(sizes)} images but {len(boxes)} boxes")
        understanding.require_locations(self.tokenizer)
        try:
            box_ids = [box_to_ids(self.tokenizer, box, width, height) for box, (width, height) in zip(boxes, sizes)]
        except ValueError as err:
            raise UserError(str(err)) from None
        codes = self.encode_images(images)
        with self._autocast():
            generated = understanding.phrase_ids(self.model, self.tokenizer, self.geometry, codes, box_ids,
                                                 max_tokens, self.max_batch_rows)
        return [sequences.parse_phrase(self.tokenizer, ids) for ids in generated]

    def _condition_codes(self, images: ImagesLike) -> torch.Tensor:
        """The codes super-resolution reads of `images`: coded at the grid the model's condition asks of them."""
        grid = self._input_grid_for_super_resolution(images)
        return self.encode_images(images, condition_grid(self.geometry.sr_condition, grid))

    def _input_grid_for_super_resolution(self, images: ImagesLike) -> int:
        low = self.image_size(self.geometry.lowres_grid)
        sizes = ({tuple(images.shape[-2:])} if isinstance(images, torch.Tensor)
                 else {(image.height, image.width) for image in images})
        if sizes == {(low, low)}:
            return self.geometry.lowres_grid
        return self.geometry.image_grid


def _rank_key(score: float | None) -> float:
    """Sort key of a candidate's score: an empty caption (None) below every real score."""
    return float("-inf") if score is None else score
