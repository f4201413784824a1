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

    def is_done(self, run_dir: Path) -> bool:
        marker = self.marker(run_dir)
        if not marker.is_file() or not all(path.exists() for path in self.outputs):
            return False
        return json.loads(marker.read_text()).get("argv") == self.argv

    def run(self, run_dir: Path) -> float:
        """Run the stage (skipped when done); returns its seconds (0 when reused)."""
        if self.is_done(run_dir):
            print(f"=== {self.name}: reused ({self.marker(run_dir)})", flush=True)
            return 0.0
        argv = self.argv
        if self.resume_marker is not None and self.resume_marker.exists():
            argv = [*argv, *self.resume_argv]
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
