"""What an evaluation's JSON file records besides the numbers: how to run it again and which weights
and files it used, each named by a fingerprint or hash so that two reports can be told apart."""
from __future__ import annotations

import argparse
import hashlib
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from checkpoints.fingerprint import module_fingerprint
from generation.loading import Components
from vqvae.api import vqvae_fingerprint


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(args: argparse.Namespace, argv: Sequence[str], parts: Components, iteration: int | None
               ) -> dict[str, Any]:
    """The command line, arguments and seed, and the checkpoint (path, training `iteration`, fingerprint of
    its weights, size, tokenizer, VQ-VAE and geometry) and Inception weights (hash) the numbers came from."""
    recorded_vqvae = parts.metadata.get("vqvae") or {}
    record: dict[str, Any] = {
        "command": shlex.join(["python", "evaluate.py", *argv]), "seed": args.seed,
        "args": {**vars(args), "given_flags": sorted(args.given_flags)},
        "checkpoint": {"path": str(Path(args.load).resolve()), "iteration": iteration,
                       "weights_fingerprint": module_fingerprint(parts.model),
                       "parameters": sum(p.numel() for p in parts.model.parameters()),
                       "tokenizer": parts.tokenizer.describe(),
                       "vqvae": {"path": str(args.vqvae or recorded_vqvae.get("path")),
                                 "fingerprint": vqvae_fingerprint(parts.vqvae)},
                       "geometry": asdict(parts.geometry)}}
    if args.inception_weights:
        record["inception_weights"] = {"path": args.inception_weights, "sha256": file_sha256(args.inception_weights)}
    return record
