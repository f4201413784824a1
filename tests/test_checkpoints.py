"""checkpoints/: the shared readers, tracker files and fingerprints."""
import pytest
import torch

from checkpoints.readers import read_torch_file, strip_data_parallel_prefix
from checkpoints.trackers import (DEEPSPEED_LATEST_FILE, TRACKER_FILE, checkpoint_iteration, read_latest_tag,
                                  write_latest_iteration)
from utils.errors import UserError
from vqvae import VQVAE, VQVAEConfig, vqvae_fingerprint


def test_vqvae_fingerprint_is_the_one_existing_checkpoints_record():
    """Recorded with the VQ-VAE's own hashing code before it moved to checkpoints/fingerprint.py."""
    vqvae = VQVAE(VQVAEConfig(codebook_size=16, embed_dim=8, hidden_channels=16, num_res_blocks=0))
    with torch.no_grad():
        for tensor in vqvae.state_dict().values():
            count = tensor.numel()
            values = torch.linspace(-1, 1, count) if tensor.is_floating_point() else torch.arange(count)
            tensor.copy_(values.view_as(tensor))
    assert vqvae_fingerprint(vqvae) == "f14589cf711d7a0f"


def test_checkpoint_iteration_of_save_folders_iteration_folders_and_others(tmp_path):
    (tmp_path / "12").mkdir()
    assert checkpoint_iteration(tmp_path) is None and checkpoint_iteration(tmp_path / "12") == 12
    write_latest_iteration(tmp_path, 12)
    assert checkpoint_iteration(tmp_path) == 12
    (tmp_path / TRACKER_FILE).unlink()
    (tmp_path / "global_step5").mkdir()
    (tmp_path / DEEPSPEED_LATEST_FILE).write_text("global_step5")
    assert read_latest_tag(tmp_path) == "global_step5" and checkpoint_iteration(tmp_path) is None
    assert checkpoint_iteration(tmp_path / "model.safetensors") is None


def test_torch_files_run_no_code_and_prefixes_are_stripped_only_when_universal(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.ones(1), "why": ValueError("code")}, path)
    with pytest.raises(UserError, match="safely: it holds an object of type .*ValueError"):
        read_torch_file(path)
    assert strip_data_parallel_prefix({"module.a": 1, "module.b": 2}) == {"a": 1, "b": 2}
    assert strip_data_parallel_prefix({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}
