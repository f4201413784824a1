"""The `emoji` dataset: Noto Color Emoji glyphs and their Unicode names, rendered once into a cache.

Spec: `../shared/datasets/emoji.md`. Which emoji, and their captions:
- every single code point of `emoji.EMOJI_DATA` whose glyph renders, captioned
  `unicodedata.name(ch).lower()`; the few newer than Python's Unicode database fall back to the emoji
  package's name;
- every fully-qualified multi-code-point sequence (ZWJ, skin tones, flags, keycaps) that renders as one
  glyph, captioned with the emoji package's English name cleaned from `:flag_Côte_d’Ivoire:` to
  `flag côte d’ivoire` (colons dropped, underscores to spaces, lower case). Sequences that are only a
  single code point plus the emoji-presentation selector U+FE0F are left out: they draw the same glyph
  as that code point, which is already in. Minimally-qualified and unqualified sequences repeat
  fully-qualified glyphs and are left out too.
A glyph is cropped to its bounding box, padded to a square on white, and resized (LANCZOS). The cache
(`data_cache/emoji_{size}.npz`, or `$DATA_CACHE_DIR/emoji_{size}.npz`) holds uint8 images
[N, size, size, 3], captions and sequences, sorted by sequence; delete it to render again.
"""
from __future__ import annotations

import io
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from utils.errors import UserError
from utils.files import atomic_write_bytes
from utils.logging import get_logger

logger = get_logger(__name__)

FONT_INSTALL_COMMAND = "apt-get install -y fonts-noto-color-emoji"
FONT_FILE = "NotoColorEmoji.ttf"
FONT_FOLDERS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
BITMAP_PIXEL_SIZE = 109  # the only size at which FreeType draws this colour bitmap font
MAX_GLYPH_WIDTH_RATIO = 1.5  # wider than 1.5 glyphs: the sequence fell apart into several glyphs
VARIATION_SELECTOR_16 = "\ufe0f"
FULLY_QUALIFIED = 2  # emoji.STATUS["fully_qualified"]
CACHE_FORMAT_VERSION = 1
DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / "data_cache"


@dataclass
class EmojiImages:
    images: np.ndarray  # uint8 [N, size, size, 3]
    captions: list[str]
    sequences: list[str]
    path: Path


def emoji_cache_path(size: int, cache_dir: str | os.PathLike | None = None) -> Path:
    folder = cache_dir or os.environ.get("DATA_CACHE_DIR") or DEFAULT_CACHE_DIR
    return Path(folder).expanduser() / f"emoji_{size}.npz"


def find_emoji_font() -> Path:
    """The Noto Color Emoji TTF, or a one-line `UserError` naming the command that installs it."""
    for folder in FONT_FOLDERS:
        root = Path(folder).expanduser()
        if root.is_dir():
            found = sorted(root.rglob(FONT_FILE))
            if found:
                return found[0]
    raise UserError(f"the emoji dataset needs the Noto Color Emoji font ({FONT_FILE}); install it with: "
                    f"{FONT_INSTALL_COMMAND}")


def clean_emoji_name(name: str) -> str:
    """`:woman_technologist_medium-dark_skin_tone:` -> `woman technologist medium-dark skin tone`."""
    return " ".join(name.strip(":").replace("_", " ").lower().split())


def emoji_candidates() -> list[tuple[str, str]]:
    """(sequence, caption) of every emoji worth rendering (see the module doc), sorted by sequence."""
    import emoji

    candidates = []
    for sequence, data in emoji.EMOJI_DATA.items():
        if len(sequence) == 1:
            name = unicodedata.name(sequence, "").lower()
            candidates.append((sequence, name or clean_emoji_name(data["en"])))
        elif data["status"] == FULLY_QUALIFIED and not (len(sequence) == 2 and sequence[1] == VARIATION_SELECTOR_16):
            candidates.append((sequence, clean_emoji_name(data["en"])))
    return sorted(candidates)


def render_glyph(sequence: str, font: ImageFont.FreeTypeFont, glyph_width: int) -> Image.Image | None:
    """The glyph of `sequence` cropped to its ink, on a transparent background; None when it draws
    nothing or falls apart into more than one glyph."""
    left, top, right, bottom = font.getbbox(sequence)
    canvas = Image.new("RGBA", (max(right, 1), max(bottom, 1)), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), sequence, font=font, embedded_color=True)
    ink = canvas.getbbox()
    if ink is None or ink[2] - ink[0] > MAX_GLYPH_WIDTH_RATIO * glyph_width:
        return None
    return canvas.crop(ink)


def to_square(glyph: Image.Image, size: int) -> np.ndarray:
    """Pad an RGBA glyph to a square on white and resize it to size x size RGB (LANCZOS)."""
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return np.asarray(square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))


def build_emoji_cache(size: int, path: str | os.PathLike, font_path: str | os.PathLike | None = None) -> EmojiImages:
    """Render every candidate emoji at size x size and write the cache atomically."""
    if size <= 0:
        raise UserError(f"emoji image size must be positive, got {size}")
    font_path = Path(font_path) if font_path is not None else find_emoji_font()
    try:
        font = ImageFont.truetype(str(font_path), size=BITMAP_PIXEL_SIZE)
    except OSError as err:
        raise UserError(f"cannot load the emoji font {font_path}: {err}") from None
    glyph_width = font.getbbox("\U0001F600")[2]  # grinning face: one glyph's width

    images, captions, sequences, seen = [], [], [], set()
    for sequence, caption in tqdm(emoji_candidates(), desc=f"rendering emoji at {size} px", unit="emoji"):
        glyph = render_glyph(sequence, font, glyph_width)
        if glyph is None or caption in seen:
            continue
        seen.add(caption)
        images.append(to_square(glyph, size))
        captions.append(caption)
        sequences.append(sequence)
    if not images:
        raise UserError(f"no emoji rendered with {font_path}; reinstall it with: {FONT_INSTALL_COMMAND}")

    path = Path(path)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=np.stack(images), captions=np.array(captions), sequences=np.array(sequences),
                        format_version=CACHE_FORMAT_VERSION)
    atomic_write_bytes(path, buffer.getvalue())
    logger.info("rendered %d emoji at %d px into %s", len(images), size, path)
    return EmojiImages(np.stack(images), captions, sequences, path)


def load_emoji(size: int = 64, cache_dir: str | os.PathLike | None = None) -> EmojiImages:
    """The emoji images at size x size, rendered into the cache on first use."""
    path = emoji_cache_path(size, cache_dir)
    if not path.is_file():
        return build_emoji_cache(size, path)
    try:
        with np.load(path) as data:
            if int(data["format_version"]) != CACHE_FORMAT_VERSION:
                raise ValueError(f"format version {int(data['format_version'])}, expected {CACHE_FORMAT_VERSION}")
            images, captions, sequences = data["images"], data["captions"].tolist(), data["sequences"].tolist()
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"bad emoji cache {path} ({err}); delete it to render it again") from None
    if images.shape[1:] != (size, size, 3) or len(captions) != len(images):
        raise UserError(f"emoji cache {path} holds images of shape {images.shape[1:]}, not {size}x{size}; "
                        "delete it to render it again")
    return EmojiImages(images, captions, sequences, path)
