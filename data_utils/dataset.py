"""Training samples of every task, built from preprocessed rows as a pure function of (seed, position).

`position` is the global sample number across epochs (0, 1, 2, ...). The row it reads, the task it
trains and whether its text is dropped for classifier-free guidance all follow from (seed, position),
so a resumed run only has to store how many samples it consumed to continue the exact same stream.
Token order is left to `data_utils.sequences`.

With `task_block` B > 1 the B consecutive positions of a block (`[kB, kB + B)`, one micro-batch of the
training stream, `training/data.py`) share one task draw: each micro-batch then holds one task (rows that
cannot train it excepted, below) and is no longer padded to the longest task's length for a single sample
of it, while the mix stays the same in expectation. Everything else is still drawn per position.

The understanding tasks (vqa, grounded_caption, referring, box_to_phrase) read a row's annotations
(`data_utils/annotations.py`). A row without what a task needs (no questions, no boxes, a caption whose
phrases could not be grounded) never draws that task: its draw is made among the tasks it can train, by
their weights, and one of the row's records of that kind is picked, again by (seed, position), or with
`understanding_turns` k > 1 up to k distinct records of one image for vqa, referring and box to phrase, one
turn each (`sequences.turns`: the image's codes once for k answers). A row that
can train no task of the mix at all (a mix of understanding tasks only) hands the sample to the next row
of the epoch's order that can.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from data_utils import annotations, sequences
from data_utils.padding import pad_sequences
from data_utils.shards import Row, RowFormat, ShardedRows
from data_utils.sr_windows import NUM_WINDOWS, Window, magnify_windows, window_crops
from data_utils.tokenizer import UnifiedTokenizer
from utils.errors import UserError

DEFAULT_TASK_WEIGHTS: Mapping[str, float] = MappingProxyType({"text2image": 1.0})
# Extra entropy words that keep the epoch permutations and the grid crops apart from the per-sample draws.
_PERMUTATION_STREAM = 0x7065726D
_CROP_STREAM = 0x63726F70
_RECORD_STREAM = 0x72656364
_WINDOW_STREAM = 0x77696E64
# Of the super-resolution samples of a row with highres codes, the share that trains one of the 9
# magnification windows (evenly); the rest train the whole-image step, as rows without highres codes do.
SR_WINDOW_SHARE = 0.5


def _active_tasks(task_weights: Mapping[str, float], has_lowres: bool,
                  has_annotations: bool = False) -> tuple[tuple[str, ...], np.ndarray]:
    """Tasks with a positive weight and their cumulative probabilities; refuses unknown or impossible ones."""
    for task, weight in task_weights.items():
        if task not in sequences.TASKS:
            raise UserError(f"unknown task {task!r} in the task weights; choose from {', '.join(sequences.TASKS)}")
        if not weight >= 0:
            raise UserError(f"task weight of {task} must be >= 0, got {weight}")
    tasks = tuple(task for task in sequences.TASKS if task_weights.get(task, 0) > 0)
    if not tasks:
        raise UserError("every task weight is 0; give at least one task a positive weight")
    if "super_resolution" in tasks and not has_lowres:
        raise UserError("super_resolution needs low-resolution codes in the data; re-run preprocess_data.py "
                        "with --with-lowres or set its weight to 0")
    understanding = [task for task in tasks if task in sequences.UNDERSTANDING_TASKS]
    if understanding and not has_annotations:
        raise UserError(f"{', '.join(understanding)} need(s) rows with annotations and location tokens; re-run "
                        "preprocess_data.py with --location-bins > 0 (e.g. 32) or set the weight(s) to 0")
    weights = np.array([task_weights[task] for task in tasks], dtype=np.float64)
    return tasks, np.cumsum(weights / weights.sum())


class TaskSequenceDataset(Dataset):
    """Maps a global sample number to `{"input_ids", "position_ids", "task"}`.

    Epoch `e` visits the rows in a permutation seeded by (seed, e). Each sample draws its task by
    `task_weights` and, for text-to-image, drops its text with probability `cfg_drop_prob` (the
    unconditional sequence that classifier-free guidance needs at sampling time); with `task_block` B, the
    B positions of a block share one task draw (module docstring). `position_layout` numbers
    the positions (`data_utils/sequences.py`); "fixed-image" gives the text the rows' `text_max_tokens`.

    Super-resolution trains the whole-image step (`lowres` -> image, `[POS0]`) and, on rows with highres
    codes (`preprocess_data.py --with-highres`), also the magnification windows (`data_utils.sr_windows`):
    `trains_windows` says whether it does, and a model trained so records it (`sr_windows`).

    `grid_mix` (off by default) trains several grid shapes from one set of rows: each text-to-image and
    image-to-text sample crops its code grid to a shape drawn from the list, at a random place. A crop of
    the codes stands in for the codes of the cropped image (the VQ-VAE is convolutional, so they differ
    only near the crop's edges), so no shape needs its own preprocessing.
    """

    def __init__(self, rows: ShardedRows, tokenizer: UnifiedTokenizer,
                 task_weights: Mapping[str, float] = DEFAULT_TASK_WEIGHTS, seed: int = 0, cfg_drop_prob: float = 0.0,
                 position_layout: str = "consecutive", grid_mix: Sequence[tuple[int, int]] | None = None,
                 task_block: int = 1, understanding_turns: int = 1):
        if len(rows) == 0:
            raise UserError(f"no rows in {rows.data_dir}; every item was skipped (see its skipped.txt)")
        if not 0.0 <= cfg_drop_prob <= 1.0:
            raise UserError(f"the CFG text drop probability must be in [0, 1], got {cfg_drop_prob}")
        self.rows = rows
        self.tokenizer = tokenizer
        self.seed = int(seed)
        self.cfg_drop_prob = float(cfg_drop_prob)
        if task_block < 1:
            raise UserError(f"a task block holds at least one sample, got {task_block}")
        self.task_block = int(task_block)
        if understanding_turns < 1:
            raise UserError(f"an understanding sample holds at least one turn, got {understanding_turns}")
        self.understanding_turns = int(understanding_turns)
        self.text_positions = sequences.text_positions_for(position_layout, rows.format.text_max_tokens)
        self.tasks, self._cumulative = _active_tasks(task_weights, rows.format.lowres_grid is not None,
                                                     rows.format.annotation_tokens > 0 and tokenizer.location_bins > 0)
        self._weights = np.diff(self._cumulative, prepend=0.0)
        self._reads_annotations = any(task in sequences.UNDERSTANDING_TASKS for task in self.tasks)
        self._permutation_epoch = -1
        self._permutation = np.zeros(0, dtype=np.int64)
        self.grid_mix = _checked_grid_mix(grid_mix, rows.format.image_grid, tokenizer)
        self.trains_windows = "super_resolution" in self.tasks and rows.format.highres_grid is not None

    def __len__(self) -> int:
        return len(self.rows)

    def row_index(self, position: int) -> int:
        """The row that global sample `position` reads."""
        if position < 0:
            raise IndexError(f"sample positions start at 0, got {position}")
        epoch, offset = divmod(int(position), len(self.rows))
        if epoch != self._permutation_epoch:  # one permutation per epoch, kept while the epoch lasts
            rng = np.random.default_rng([self.seed, epoch, _PERMUTATION_STREAM])
            self._permutation = rng.permutation(len(self.rows))
            self._permutation_epoch = epoch
        return int(self._permutation[offset])

    def draw(self, position: int, row_tasks: Sequence[str] | None = None) -> tuple[str | None, bool]:
        """The task of sample `position` and whether its text is dropped; `row_tasks`: the understanding tasks
        its row can train (None: all), the others' weights left out of its draw (None: no task fits)."""
        task_draw, drop_draw = np.random.default_rng([self.seed, int(position)]).random(2)  # both always drawn,
        # so each stays fixed if the other changes; a block takes the task drawn at its first position.
        block_start = int(position) - int(position) % self.task_block
        if block_start != position:
            task_draw = np.random.default_rng([self.seed, block_start]).random(2)[0]
        tasks, cumulative = self.tasks, self._cumulative
        if row_tasks is not None and any(t in sequences.UNDERSTANDING_TASKS and t not in row_tasks for t in tasks):
            keep = [k for k, t in enumerate(tasks) if t not in sequences.UNDERSTANDING_TASKS or t in row_tasks]
            if not keep:
                return None, False
            tasks = tuple(tasks[k] for k in keep)
            cumulative = np.cumsum(self._weights[keep] / self._weights[keep].sum())
        task = tasks[min(int(np.searchsorted(cumulative, task_draw, side="right")), len(tasks) - 1)]
        return task, task == "text2image" and drop_draw < self.cfg_drop_prob

    def _understanding(self, task: str, position: int, records: annotations.RowAnnotations, image: torch.Tensor,
                       grid) -> sequences.TokenSequence:
        """The sequence of an understanding task: for vqa, referring and box_to_phrase `understanding_turns` of
        the row's records (as many as it has, if fewer) picked by (seed, position), one turn each."""
        rng = np.random.default_rng([self.seed, int(position), _RECORD_STREAM])
        tok = self.tokenizer
        if task == "grounded_caption":
            return sequences.grounded_caption(tok, image, grid, records.grounded)
        pool = {"vqa": records.questions, "referring": records.expressions, "box_to_phrase": records.objects}[task]
        picked = rng.permutation(len(pool))[:self.understanding_turns]
        return sequences.turns(tok, task, image, grid, [pool[k] for k in picked])

    def crop(self, position: int, codes: np.ndarray) -> np.ndarray:
        """Sample `position`'s crop of `codes` under `grid_mix`: a shape of the mix, at a place in the grid."""
        rng = np.random.default_rng([self.seed, int(position), _CROP_STREAM])
        rows, cols = self.grid_mix[int(rng.integers(len(self.grid_mix)))]
        top, left = (int(rng.integers(side - size + 1)) for side, size in zip(codes.shape, (rows, cols)))
        return codes[top:top + rows, left:left + cols]

    def sr_window(self, position: int) -> Window | None:
        """The magnification window that super-resolution sample `position` trains if its row has highres
        codes, or None for the whole-image step (`SR_WINDOW_SHARE`)."""
        rng = np.random.default_rng([self.seed, int(position), _WINDOW_STREAM])
        share, window = rng.random(), int(rng.integers(NUM_WINDOWS))
        return magnify_windows(self.rows.format.image_grid)[window] if share < SR_WINDOW_SHARE else None

    def super_resolution_sequence(self, row: Row, window: Window | None) -> sequences.TokenSequence:
        """The super-resolution sample of `row`: the whole-image step, or `window` of its magnification
        (the crops generation reads and writes, `sr_windows.window_crops`), conditioned as the rows say
        (`RowFormat.sr_condition`)."""
        row_format = self.rows.format
        if window is None or row.highres is None:
            lo, hi, index = row.lowres, row.image, 0
        else:
            source = row.image if row_format.sr_condition == "lowres" else row.upsampled
            (lo, hi), index = window_crops(window, row_format.sr_condition, source, row.highres), window.index
        return sequences.super_resolution(self.tokenizer, row.text_ids, torch.from_numpy(np.ascontiguousarray(lo)),
                                          row_format.lowres_grid, row_format.image_grid,
                                          torch.from_numpy(np.ascontiguousarray(hi)),
                                          window=index, text_positions=self.text_positions)

    def __getitem__(self, position: int) -> dict[str, Any]:
        for offset in range(len(self.rows)):
            row = self.rows[self.row_index(position + offset)]
            records = annotations.unpack(row.annotations) if row.annotations is not None and self._reads_annotations \
                else None
            task, drop_text = self.draw(position, records.tasks() if records is not None else None)
            if task is not None:
                break
        else:
            raise UserError(f"no row of {self.rows.data_dir} holds questions, boxes or expressions for "
                            f"{', '.join(self.tasks)}; add text2image or image2text to the mix")
        grid = self.rows.format.image_grid
        image = torch.from_numpy(row.image)
        # Boxes name places in the whole image, so the understanding tasks are never cropped.
        if task in ("text2image", "image2text") and self.grid_mix:
            cropped = self.crop(position, row.image)
            grid, image = tuple(cropped.shape), torch.from_numpy(np.ascontiguousarray(cropped))
        if task in sequences.UNDERSTANDING_TASKS:
            sequence = self._understanding(task, position, records, image, grid)
        elif task == "text2image":
            text_ids = [] if drop_text else row.text_ids
            sequence = sequences.text2image(self.tokenizer, text_ids, grid, image, self.text_positions)
        elif task == "image2text":
            sequence = sequences.image2text(self.tokenizer, image, grid, row.text_ids)
        else:
            sequence = self.super_resolution_sequence(row, self.sr_window(position))
        return {"input_ids": torch.tensor(sequence.ids, dtype=torch.long),
                "position_ids": torch.tensor(sequence.position_ids, dtype=torch.long), "task": task}


def _checked_grid_mix(grid_mix: Sequence[tuple[int, int]] | None, image_grid: int, tokenizer: UnifiedTokenizer
                      ) -> tuple[tuple[int, int], ...]:
    """The mix's shapes, refusing one larger than the rows' grid or without grid tokens, in one line."""
    shapes = tuple((int(rows), int(cols)) for rows, cols in grid_mix or ())
    for rows, cols in shapes:
        if rows > image_grid or cols > image_grid:
            raise UserError(f"grid {rows}x{cols} of the grid mix does not fit the data's {image_grid}x{image_grid} "
                            f"code grids")
        sequences.grid_ids(tokenizer, (rows, cols))
    return shapes


def collate_sequences(samples: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, Any]:
    """Stack samples into a batch, right-padded with `pad_id` (positions padded with 0)."""
    batch = pad_sequences([sample["input_ids"] for sample in samples], [sample["position_ids"] for sample in samples],
                          pad_id)
    return {"input_ids": batch.ids, "position_ids": batch.positions, "tasks": [sample["task"] for sample in samples]}


def _task_lengths(row_format: RowFormat, task_weights: Mapping[str, float], measure, understanding_turns: int
                  ) -> int:
    tasks, _ = _active_tasks(task_weights, row_format.lowres_grid is not None, row_format.annotation_tokens > 0)
    return max(measure(task, row_format.text_max_tokens, row_format.image_grid, row_format.lowres_grid,
                       understanding_turns) for task in tasks)


def sequence_length(row_format: RowFormat, task_weights: Mapping[str, float], understanding_turns: int = 1) -> int:
    """The longest sequence (in tokens) these rows and tasks produce: the batch length to plan for."""
    return _task_lengths(row_format, task_weights, sequences.max_length, understanding_turns)


def positions_needed(row_format: RowFormat, task_weights: Mapping[str, float], understanding_turns: int = 1) -> int:
    """Position embeddings these rows and tasks need; below `sequence_length` with super-resolution,
    whose positions restart at `[ROI2]`. Compare it with the model's `max_position_embeddings`."""
    return _task_lengths(row_format, task_weights, sequences.num_positions, understanding_turns)
