"""A pipeline of the repository's own command lines, each stage reused when already done.

The quick start and the quality benchmark chain tokenizer -> VQ-VAE -> shards -> transformer ->
generation. Each stage runs as a subprocess (its own progress bar and one-line errors); a stage whose
outputs exist and whose command line is unchanged is skipped, so a re-run after an interruption, or
after changing a later stage's flags, redoes only what is missing.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import UserError
from utils.files import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stage:
    """One step: a Python script of the repository with its arguments, and the files that prove it ran.

    `resume_argv` is appended when `resume_marker` exists at run time (a killed training run left a
    checkpoint): it continues the interrupted work without being part of the stage's identity.
    """

    name: str
    argv: list[str]
    outputs: list[Path]
    resume_marker: Path | None = None
    resume_argv: list[str] = field(default_factory=list)

    def marker(self, run_dir: Path) -> Path:
        return run_dir / ".stages" / f"{self.name}.json"

    def recorded(self, run_dir: Path) -> dict:
        """What the marker says: the command last started here, and its seconds once it finished."""
        marker = self.marker(run_dir)
        return json.loads(marker.read_text()) if marker.is_file() else {}

    def is_done(self, run_dir: Path) -> bool:
        recorded = self.recorded(run_dir)
        return ("seconds" in recorded and recorded.get("argv") == self.argv
                and all(path.exists() for path in self.outputs))

    def run(self, run_dir: Path) -> float:
        """Run the stage (skipped when done); returns its seconds (0 when reused). A checkpoint left by
        another command is refused rather than resumed: it would continue that command's work under this
        one's name."""
        if self.is_done(run_dir):
            print(f"=== {self.name}: reused ({self.marker(run_dir)})", flush=True)
            return 0.0
        argv = self.argv
        if self.resume_marker is not None and self.resume_marker.exists():
            started = self.recorded(run_dir).get("argv", self.argv)
            if started != self.argv:
                changed = sorted(set(started).symmetric_difference(self.argv))
                raise UserError(f"stage '{self.name}': {self.resume_marker.parent} holds a checkpoint of another "
                                f"command (differing arguments {' '.join(changed)}); delete that folder to start "
                                f"over, or run with the command it was started with")
            argv = [*argv, *self.resume_argv]
        atomic_write_json(self.marker(run_dir), {"argv": self.argv})
        print(f"\n=== {self.name}: {shlex.join(argv)}", flush=True)
        start = time.time()
        result = subprocess.run([sys.executable, *argv], cwd=ROOT)
        if result.returncode != 0:
            raise UserError(f"stage '{self.name}' failed (exit {result.returncode}); fix the error above "
                            f"and re-run: finished stages are reused")
        missing = [str(path) for path in self.outputs if not path.exists()]
        if missing:
            raise UserError(f"stage '{self.name}' finished without writing {', '.join(missing)}")
        seconds = time.time() - start
        atomic_write_json(self.marker(run_dir), {"argv": self.argv, "seconds": round(seconds, 1)})
        print(f"=== {self.name}: done in {seconds:.0f} s", flush=True)
        return seconds
