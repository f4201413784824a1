"""Where prompts come from: `--prompt`, an `--input-source` file, or an interactive terminal.

A prompt file holds one prompt per line, either the bare text or `id<TAB>text`; blank lines are
skipped. Ids name the output files, so they must be unique; prompts without one are numbered by
their order among all prompts (`0000`, `0001`, ...).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, TextIO

from utils.errors import UserError

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Prompt:
    id: str      # safe for file names
    text: str


def _safe_id(raw: str, where: str) -> str:
    safe = _UNSAFE_ID_CHARS.sub("_", raw.strip()).strip("._")
    if not safe:
        raise UserError(f"{where}: prompt id {raw!r} has no letters or digits to name a file with")
    return safe


def _checked_text(text: str, where: str) -> str:
    text = text.strip()
    if not text:
        raise UserError(f"{where}: empty prompt")
    return text


def read_prompt_file(path: str | os.PathLike) -> list[Prompt]:
    """Prompts of a UTF-8 file, one per line (`text` or `id<TAB>text`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    prompts: list[Prompt] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if "\t" in line:
            raw_id, text = line.split("\t", 1)
            prompts.append(Prompt(_safe_id(raw_id, where), _checked_text(text, where)))
        else:
            prompts.append(Prompt(f"{len(prompts):04d}", _checked_text(line, where)))
    if not prompts:
        raise UserError(f"prompt file {path} holds no prompts")
    return _unique(prompts, str(path))


def _unique(prompts: list[Prompt], source: str) -> list[Prompt]:
    seen: set[str] = set()
    for prompt in prompts:
        if prompt.id in seen:
            raise UserError(f"{source}: prompt id {prompt.id!r} appears twice (it names the output files)")
        seen.add(prompt.id)
    return prompts


def collect_prompts(prompt_texts: Sequence[str] | None, input_source: str | None) -> list[Prompt] | None:
    """Prompts from `--prompt` (repeatable) and `--input-source`; None when neither was given."""
    if prompt_texts and input_source:
        raise UserError("give prompts with either --prompt or --input-source, not both")
    if input_source:
        return read_prompt_file(input_source)
    if prompt_texts:
        return [Prompt(f"{i:04d}", _checked_text(text, "--prompt")) for i, text in enumerate(prompt_texts)]
    return None


def interactive_prompts(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stderr) -> Iterator[Prompt]:
    """Prompts typed at a terminal, one per line, until end of input (Ctrl-D); blank lines are ignored.

    Refuses at once (not at the first read) a stdin that is not a terminal: a pipe or batch job
    should pass --input-source instead, and silently waiting on it would hang.
    """
    if not stdin.isatty():
        raise UserError("no prompt: give --prompt TEXT or --input-source FILE (stdin is not a terminal)")
    return _typed_prompts(stdin, stdout)


def _typed_prompts(stdin: TextIO, stdout: TextIO) -> Iterator[Prompt]:
    count = 0
    while True:
        stdout.write("prompt (Ctrl-D to quit)> ")
        stdout.flush()
        line = stdin.readline()
        if not line:
            stdout.write("\n")
            return
        if line.strip():
            yield Prompt(f"{count:04d}", line.strip())
            count += 1
