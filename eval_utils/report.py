"""What one evaluation section hands back, and how its numbers are keyed for JSON and TensorBoard."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Section:
    """What a section found: `results` go to the JSON file, `table` to stdout."""

    name: str
    results: dict[str, Any]
    table: str


def scale_key(cfg_scale: float) -> str:
    """The JSON key of a guidance scale: "3" for 3.0, "1.5" for 1.5."""
    return f"{cfg_scale:g}"


def flat_scalars(results: dict[str, Any], prefix: str) -> dict[str, float]:
    """Every number of nested results as `prefix/key/...` (for TensorBoard); booleans and text are left out."""
    scalars: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            scalars.update(flat_scalars(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[name] = float(value)
    return scalars
