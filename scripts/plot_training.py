"""Draw training curves from TensorBoard event files into a PNG (no matplotlib needed).

Example:
    python scripts/plot_training.py runs/quickstart/tb/gpt --tags train/loss valid/loss --output docs/images/loss.png

Reads the scalars with TensorBoard's own event reader and draws them with Pillow: one panel, a line
per tag, step on the x axis, value on the y axis, with the tag names and value range labelled.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw  # noqa: E402

from utils.errors import UserError, run_main  # noqa: E402

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
WIDTH, HEIGHT, MARGIN = 720, 420, 56


def read_scalars(log_dir: Path, tags: list[str]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) pairs of each tag, from every event file under `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not log_dir.is_dir():
        raise UserError(f"no TensorBoard folder at {log_dir}")
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    available = accumulator.Tags().get("scalars", [])
    missing = [tag for tag in tags if tag not in available]
    if missing:
        raise UserError(f"{log_dir} has no scalar {missing[0]!r}; it has: {', '.join(sorted(available)) or 'none'}")
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in tags}


def draw(curves: dict[str, list[tuple[int, float]]], title: str) -> Image.Image:
    points = [point for curve in curves.values() for point in curve]
    if not points:
        raise UserError("the requested scalars hold no points yet")
    x_max = max(step for step, _ in points) or 1
    y_min, y_max = min(value for _, value in points), max(value for _, value in points)
    y_span = (y_max - y_min) or 1.0
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    pen = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN, MARGIN // 2, WIDTH - MARGIN // 2, HEIGHT - MARGIN

    def to_pixel(step: int, value: float) -> tuple[float, float]:
        return (left + (right - left) * step / x_max, bottom - (bottom - top) * (value - y_min) / y_span)

    pen.rectangle([left, top, right, bottom], outline="black")
    for fraction in (0.0, 0.5, 1.0):
        value = y_min + fraction * y_span
        _, y = to_pixel(0, value)
        pen.text((4, y - 6), f"{value:.3g}", fill="black")
        step = int(fraction * x_max)
        x, _ = to_pixel(step, y_min)
        pen.text((x - 10, bottom + 6), str(step), fill="black")
    pen.text((left, 4), title, fill="black")
    pen.text(((left + right) // 2 - 12, bottom + 22), "step", fill="black")
    for index, (tag, curve) in enumerate(curves.items()):
        colour = COLOURS[index % len(COLOURS)]
        if len(curve) > 1:
            pen.line([to_pixel(step, value) for step, value in curve], fill=colour, width=2)
        else:
            x, y = to_pixel(*curve[0])
            pen.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        pen.text((right - 170, top + 8 + 14 * index), tag, fill=colour)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log_dir", type=Path, help="TensorBoard folder (e.g. SAVE/tensorboard)")
    parser.add_argument("--tags", nargs="+", default=["train/loss"], help="scalar tags to draw")
    parser.add_argument("--title", default="training curves")
    parser.add_argument("--output", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    image = draw(read_scalars(args.log_dir, args.tags), args.title)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_main(main)
