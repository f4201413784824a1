"""Sharded memmap rows of token ids plus a JSON manifest: the on-disk training data.

`preprocess_data.py` writes one shard per finished chunk of source items and rewrites the manifest
after each, so a killed run keeps every shard the manifest lists and redoes the rest. Training reads
the rows through `ShardedRows`, which memory-maps the shards lazily in each process (DataLoader
workers included) and refuses data made with another tokenizer or VQ-VAE.
The layout is documented in docs/data_format.md.
"""
from __future__ import annotations

import io
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from data_utils.sr_windows import DEFAULT_SR_CONDITION, SR_CONDITIONS, condition_grid
from utils.errors import UserError
from utils.files import atomic_write_bytes, atomic_write_json, read_json

if TYPE_CHECKING:
    from data_utils.tokenizer import UnifiedTokenizer

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_UINT16_VOCAB_LIMIT = 1 << 16
MAX_OPEN_SHARDS = 1024


@dataclass(frozen=True)
class RowFormat:
    """Fixed-length row layout: `text_len | text (PAD-filled) | image codes | optional lowres codes |
    optional highres codes | optional upsampled codes | optional annotations` (the understanding tasks'
    records, `data_utils/annotations.py`).

    The lowres field holds super-resolution's condition of the whole-image step (`data_utils.sr_windows`):
    the codes of the image downscaled 2x (`sr_condition` "lowres", half the image grid), or of that
    downscaled image bicubic-upsampled back to the image's size ("upsampled", the image grid). With
    "upsampled" and highres codes, the upsampled field holds the condition of the windows: the codes of the
    image bicubic-upsampled to twice its side (the highres grid).

    The highres field holds the codes of the image at twice its side, which super-resolution's windows
    train on. An item whose source is too small for that keeps its row with the field filled with
    `missing_code` (never a code), and `Row.highres` is None for it.
    """

    text_max_tokens: int
    image_grid: int
    lowres_grid: int | None
    dtype: str  # "uint16" or "int32"
    highres_grid: int | None = None
    annotation_tokens: int = 0  # 0: no annotations field
    sr_condition: str = "lowres"  # what the lowres (and upsampled) fields hold; data_utils.sr_windows

    def __post_init__(self) -> None:
        if self.text_max_tokens < 1 or self.image_grid < 1:
            raise ValueError(f"bad row format {self}")
        if self.sr_condition not in SR_CONDITIONS:
            raise ValueError(f"unknown super-resolution condition {self.sr_condition!r}")
        if self.lowres_grid is not None and self.lowres_grid != condition_grid(self.sr_condition, self.image_grid // 2):
            raise ValueError(f"lowres grid {self.lowres_grid} does not suit the {self.sr_condition} condition of "
                             f"{self.image_grid}x{self.image_grid} images")
        if self.sr_condition != "lowres" and self.lowres_grid is None:
            raise ValueError(f"the {self.sr_condition} condition needs a lowres field")
        if self.highres_grid is not None and self.highres_grid != 2 * self.image_grid:
            raise ValueError(f"highres grid {self.highres_grid} must be twice the image grid {self.image_grid}")
        if self.dtype not in ("uint16", "int32"):
            raise ValueError(f"row dtype must be uint16 or int32, got {self.dtype}")
        if self.annotation_tokens < 0:
            raise ValueError(f"annotation tokens must be >= 0, got {self.annotation_tokens}")

    @staticmethod
    def dtype_for_vocab(vocab_size: int) -> str:
        """The narrowest dtype that holds every id: uint16 halves the disk and page-cache footprint."""
        return "uint16" if vocab_size <= _UINT16_VOCAB_LIMIT else "int32"

    @property
    def text_offset(self) -> int:
        return 1

    @property
    def image_offset(self) -> int:
        return self.text_offset + self.text_max_tokens

    @property
    def lowres_offset(self) -> int:
        return self.image_offset + self.image_grid**2

    @property
    def highres_offset(self) -> int:
        return self.lowres_offset + (self.lowres_grid**2 if self.lowres_grid else 0)

    @property
    def upsampled_offset(self) -> int:
        return self.highres_offset + (self.highres_grid**2 if self.highres_grid else 0)

    @property
    def upsampled_grid(self) -> int | None:
        """The side of the upsampled field (the windows' condition), None without one."""
        return self.highres_grid if self.sr_condition == "upsampled" else None

    @property
    def row_length(self) -> int:
        return self.annotations_offset + self.annotation_tokens

    @property
    def annotations_offset(self) -> int:
        return self.upsampled_offset + (self.upsampled_grid**2 if self.upsampled_grid else 0)

    @property
    def missing_code(self) -> int:
        """What fills the highres field of an item without highres codes: the dtype's largest value, which
        no code reaches (codes lie below the codebook size, which is below the vocabulary size)."""
        return int(np.iinfo(self.numpy_dtype).max)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def fields(self) -> list[dict[str, Any]]:
        """The field table written into the manifest, so a reader in any language can slice a row."""
        table = [
            {"name": "text_len", "offset": 0, "length": 1, "grid": None},
            {"name": "text", "offset": self.text_offset, "length": self.text_max_tokens, "grid": None},
            {"name": "image", "offset": self.image_offset, "length": self.image_grid**2, "grid": self.image_grid},
        ]
        if self.lowres_grid:
            table.append({"name": "lowres", "offset": self.lowres_offset, "length": self.lowres_grid**2,
                          "grid": self.lowres_grid,
                          **({"condition": self.sr_condition} if self.sr_condition != DEFAULT_SR_CONDITION else {})})
        if self.highres_grid:
            table.append({"name": "highres", "offset": self.highres_offset, "length": self.highres_grid**2,
                          "grid": self.highres_grid, "missing_code": self.missing_code})
        if self.upsampled_grid:
            table.append({"name": "upsampled", "offset": self.upsampled_offset, "length": self.upsampled_grid**2,
                          "grid": self.upsampled_grid})
        if self.annotation_tokens:
            table.append({"name": "annotations", "offset": self.annotations_offset, "length": self.annotation_tokens,
                          "grid": None})
        return table

    def to_dict(self) -> dict[str, Any]:
        return {"row_length": self.row_length, "dtype": self.dtype, "fields": self.fields()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RowFormat:
        """Inverse of `to_dict`; raises ValueError when the field table is not one we write."""
        fields = {field["name"]: field for field in data["fields"]}
        lowres, highres, annotations = fields.get("lowres"), fields.get("highres"), fields.get("annotations")
        row_format = cls(text_max_tokens=int(fields["text"]["length"]), image_grid=int(fields["image"]["grid"]),
                         lowres_grid=int(lowres["grid"]) if lowres else None, dtype=str(data["dtype"]),
                         highres_grid=int(highres["grid"]) if highres else None,
                         annotation_tokens=int(annotations["length"]) if annotations else 0,
                         sr_condition=str(lowres.get("condition", DEFAULT_SR_CONDITION)) if lowres
                         else DEFAULT_SR_CONDITION)
        if row_format.to_dict() != {"row_length": data["row_length"], "dtype": data["dtype"],
                                    "fields": list(data["fields"])}:
            raise ValueError("field table does not match the row layout this code writes")
        return row_format

    def pack(self, text_ids: np.ndarray, image: np.ndarray, lowres: np.ndarray | None, pad_id: int,
             highres: np.ndarray | None = None, annotations: np.ndarray | None = None, *,
             upsampled: np.ndarray | None = None) -> np.ndarray:
        """One row from its parts; `text_ids` must already fit the text budget. With a highres field,
        `highres=None` marks the item as having no highres codes. `annotations` (the field from
        `data_utils.annotations.pack`) and `upsampled` are given exactly when the format has that field."""
        if len(text_ids) > self.text_max_tokens:
            raise ValueError(f"{len(text_ids)} text ids exceed the budget of {self.text_max_tokens}")
        if image.shape != (self.image_grid, self.image_grid):
            raise ValueError(f"image codes of shape {image.shape}, expected {(self.image_grid,) * 2}")
        if (lowres is None) != (self.lowres_grid is None):
            raise ValueError("lowres codes must be given exactly when the format has a lowres field")
        row = np.full(self.row_length, pad_id, dtype=self.numpy_dtype)
        row[0] = len(text_ids)
        row[self.text_offset:self.text_offset + len(text_ids)] = text_ids
        row[self.image_offset:self.lowres_offset] = image.reshape(-1)
        if lowres is not None:
            if lowres.shape != (self.lowres_grid, self.lowres_grid):
                raise ValueError(f"lowres codes of shape {lowres.shape}, expected {(self.lowres_grid,) * 2}")
            row[self.lowres_offset:self.highres_offset] = lowres.reshape(-1)
        if highres is not None:
            if highres.shape != (self.highres_grid, self.highres_grid):
                raise ValueError(f"highres codes of shape {highres.shape}, expected {(self.highres_grid,) * 2}")
            row[self.highres_offset:self.upsampled_offset] = highres.reshape(-1)
        elif self.highres_grid:
            row[self.highres_offset:self.upsampled_offset] = self.missing_code
        if (upsampled is None) != (self.upsampled_grid is None):
            raise ValueError("upsampled codes must be given exactly when the format has an upsampled field")
        if upsampled is not None:
            if upsampled.shape != (self.upsampled_grid, self.upsampled_grid):
                raise ValueError(f"upsampled codes of shape {upsampled.shape}, expected {(self.upsampled_grid,) * 2}")
            row[self.upsampled_offset:self.annotations_offset] = upsampled.reshape(-1)
        if (annotations is None) != (self.annotation_tokens == 0):
            raise ValueError("annotations must be given exactly when the format has an annotations field")
        if annotations is not None:
            if annotations.shape != (self.annotation_tokens,):
                raise ValueError(f"annotations of shape {annotations.shape}, expected ({self.annotation_tokens},)")
            row[self.annotations_offset:] = annotations
        return row


@dataclass
class Row:
    """One preprocessed item: unified text ids (no padding), image codes, optional low-res codes, optional
    codes of the image at twice its side (None where the data has none, or this item's source was too small),
    and with the "upsampled" condition and highres codes, the codes of the image upsampled to twice its side."""

    text_ids: np.ndarray
    image: np.ndarray
    lowres: np.ndarray | None
    source_index: int
    highres: np.ndarray | None = None
    annotations: np.ndarray | None = None  # the raw field; read it with data_utils.annotations.unpack
    upsampled: np.ndarray | None = None


def unpack_row(row_format: RowFormat, row: np.ndarray, source_index: int) -> Row:
    """Inverse of `RowFormat.pack`; copies out of the memmap and widens to int64."""
    f = row_format
    text_len = int(row[0])
    if text_len > f.text_max_tokens:
        raise UserError(f"corrupt row (text length {text_len} > {f.text_max_tokens}) for source item {source_index}")
    lowres = highres = None
    if f.lowres_grid:
        lowres = np.array(row[f.lowres_offset:f.highres_offset], dtype=np.int64).reshape(f.lowres_grid, f.lowres_grid)
    if f.highres_grid and row[f.highres_offset] != f.missing_code:
        highres = np.array(row[f.highres_offset:f.upsampled_offset], dtype=np.int64).reshape(f.highres_grid,
                                                                                           f.highres_grid)
    upsampled = (np.array(row[f.upsampled_offset:f.annotations_offset], dtype=np.int64).reshape(f.upsampled_grid,
                                                                                                f.upsampled_grid)
                 if f.upsampled_grid else None)
    annotations = np.array(row[f.annotations_offset:], dtype=np.int64) if f.annotation_tokens else None
    return Row(text_ids=np.array(row[f.text_offset:f.text_offset + text_len], dtype=np.int64),
               image=np.array(row[f.image_offset:f.lowres_offset], dtype=np.int64).reshape(f.image_grid, f.image_grid),
               lowres=lowres, source_index=source_index, highres=highres, annotations=annotations,
               upsampled=upsampled)


# ---------------------------------------------------------------- writer side

def shard_name(chunk: int) -> str:
    """Shards are named by the chunk they hold, so a redone chunk overwrites its own file."""
    return f"shard_{chunk:05d}.bin"


def index_name(shard_file: str) -> str:
    return shard_file[:-len(".bin")] + ".idx.npy"


def write_shard(data_dir: str | os.PathLike, chunk: int, rows: np.ndarray, source_indices: np.ndarray,
                row_format: RowFormat) -> dict[str, Any]:
    """Write one chunk's rows and their source indices atomically; return its manifest entry.

    The shard only counts once the caller lists the returned entry in the manifest: a kill before that
    leaves files the next run deletes and rewrites.
    """
    rows = np.ascontiguousarray(rows, dtype=row_format.numpy_dtype).reshape(-1, row_format.row_length)
    source_indices = np.asarray(source_indices, dtype=np.int64)
    if len(rows) != len(source_indices):
        raise ValueError(f"{len(rows)} rows but {len(source_indices)} source indices")
    data_dir = Path(data_dir)
    file = shard_name(chunk)
    buffer = io.BytesIO()
    np.save(buffer, source_indices)
    atomic_write_bytes(data_dir / index_name(file), buffer.getvalue())
    atomic_write_bytes(data_dir / file, rows.tobytes())
    return {"file": file, "rows": int(len(rows)), "first_chunk": int(chunk)}


def write_manifest(data_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    atomic_write_json(Path(data_dir) / MANIFEST_NAME, manifest)


def read_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a data folder, with one-line errors for a missing, corrupt or foreign one."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{data_dir} holds no {MANIFEST_NAME}; create the data with preprocess_data.py")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise UserError(f"{path} has format version {version}, this code reads version {FORMAT_VERSION}; "
                        "re-run preprocess_data.py")
    try:
        RowFormat.from_dict(manifest)
        str(manifest["tokenizer"]["fingerprint"]), str(manifest["vqvae"]["fingerprint"])
        int(manifest["num_chunks"]), bool(manifest["complete"])
        for shard in manifest["shards"]:
            int(shard["rows"]), str(shard["file"]), int(shard["first_chunk"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path} is corrupt ({type(err).__name__}: {err}); re-run preprocess_data.py") from None
    return manifest


def remove_unlisted_files(data_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> list[str]:
    """Delete temp files and shards of unfinished chunks that a killed run left behind."""
    data_dir = Path(data_dir)
    listed = {MANIFEST_NAME}
    for shard in manifest["shards"]:
        listed.update((shard["file"], index_name(shard["file"])))
    removed = []
    for path in sorted(data_dir.iterdir()):
        is_temp = path.name.startswith(".") and path.name.endswith(".tmp")
        is_shard = path.name.startswith("shard_") and (path.name.endswith(".bin") or path.name.endswith(".idx.npy"))
        if (is_temp or is_shard) and path.name not in listed:
            path.unlink()
            removed.append(path.name)
    return removed


# ---------------------------------------------------------------- reader side

def _check_fingerprint(data_dir: Path, verb: str, what: str, recorded: str | None, current: str | None) -> None:
    if current is not None and recorded != current:
        raise UserError(f"data in {data_dir} was {verb} with {what} {recorded} but the current {what} is "
                        f"{current}; re-run preprocess_data.py")


class ShardedRows:
    """Random access to every row of a data folder, memory-mapped lazily and read-only.

    Safe to hand to DataLoader workers: pickling drops the open memmaps and each process maps the
    shards again on first access. Pass the tokenizer and VQ-VAE fingerprint in use so that data made
    with others is refused instead of silently training on wrong ids.
    """

    def __init__(self, data_dir: str | os.PathLike, tokenizer: UnifiedTokenizer | None = None,
                 vqvae_fingerprint: str | None = None):
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir)
        self.format = RowFormat.from_dict(self.manifest)
        if not self.manifest["complete"]:
            raise UserError(f"data in {self.data_dir} is unfinished ({len(self.manifest['shards'])} of "
                            f"{self.manifest['num_chunks']} chunks); re-run preprocess_data.py with the "
                            "same arguments to finish it")
        _check_fingerprint(self.data_dir, "tokenized", "tokenizer", self.manifest["tokenizer"]["fingerprint"],
                           None if tokenizer is None else tokenizer.fingerprint())
        _check_fingerprint(self.data_dir, "encoded", "VQ-VAE", self.manifest["vqvae"]["fingerprint"], vqvae_fingerprint)
        self._shards = [shard for shard in self.manifest["shards"] if shard["rows"] > 0]
        for shard in self._shards:
            self._check_shard_files(shard)
        self._ends = np.cumsum([shard["rows"] for shard in self._shards], dtype=np.int64)
        self._maps: OrderedDict[int, tuple[np.memmap, np.ndarray]] = OrderedDict()

    def _check_shard_files(self, shard: Mapping[str, Any]) -> None:
        path = self.data_dir / shard["file"]
        if not path.is_file():
            raise UserError(f"shard {path} listed in the manifest is missing; re-run preprocess_data.py")
        expected = shard["rows"] * self.format.row_length * self.format.numpy_dtype.itemsize
        if path.stat().st_size != expected:
            raise UserError(f"shard {path} has {path.stat().st_size} bytes but the manifest says {shard['rows']} rows "
                            f"({expected} bytes); re-run preprocess_data.py")
        index_path = self.data_dir / index_name(shard["file"])
        if not index_path.is_file():
            raise UserError(f"index file {index_path} is missing; re-run preprocess_data.py")

    def _open(self, shard_number: int) -> tuple[np.memmap, np.ndarray]:
        """The rows and source indices of a shard, mapped on first use; the least recently used maps are
        closed beyond `MAX_OPEN_SHARDS`, as a process may hold only so many (Linux: vm.max_map_count)."""
        if shard_number in self._maps:
            self._maps.move_to_end(shard_number)
        else:
            shard = self._shards[shard_number]
            rows = np.memmap(self.data_dir / shard["file"], dtype=self.format.numpy_dtype, mode="r",
                             shape=(shard["rows"], self.format.row_length))
            try:
                indices = np.load(self.data_dir / index_name(shard["file"]), mmap_mode="r")
            except ValueError as err:
                raise UserError(f"index file of {shard['file']} is corrupt ({err}); "
                                "re-run preprocess_data.py") from None
            if indices.shape != (shard["rows"],):
                raise UserError(f"index file of {shard['file']} holds {indices.shape} entries, expected "
                                f"{shard['rows']}; re-run preprocess_data.py")
            self._maps[shard_number] = (rows, indices)
            if len(self._maps) > MAX_OPEN_SHARDS:
                self._maps.popitem(last=False)
        return self._maps[shard_number]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> Row:
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        index %= len(self)
        shard_number = int(np.searchsorted(self._ends, index, side="right"))
        local = index - (int(self._ends[shard_number - 1]) if shard_number else 0)
        rows, indices = self._open(shard_number)
        return unpack_row(self.format, rows[local], int(indices[local]))

    def source_indices(self) -> np.ndarray:
        """Source item index of every row, in row order (for checks and reports)."""
        parts = [np.asarray(self._open(i)[1]) for i in range(len(self._shards))]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
