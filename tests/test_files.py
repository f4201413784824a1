"""Atomic writes: the destination appears whole, with ordinary permissions, and a failed write leaves no trace."""
import json
import os
import stat

import pytest
import torch

from utils.errors import UserError
from utils.files import atomic_save_safetensors, atomic_torch_save, atomic_write_json, read_json


def test_json_round_trip_with_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write_json(path, {"name": "左上角", "n": 3})
    assert read_json(path) == {"name": "左上角", "n": 3}
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"old": True})
    with pytest.raises(Exception):  # pickling a lambda fails after the temporary file was created
        atomic_torch_save(path, {"bad": lambda: None})
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_safetensors_and_bad_json(tmp_path):
    from safetensors.torch import load_file

    atomic_save_safetensors(tmp_path / "m.safetensors", {"w": torch.arange(6.0).view(2, 3).t()})
    assert torch.equal(load_file(tmp_path / "m.safetensors")["w"], torch.arange(6.0).view(2, 3).t())
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(UserError, match="missing file"):
        read_json(tmp_path / "nope.json")
