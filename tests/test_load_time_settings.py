"""The model settings a checkpoint's tensors do not show, given at load time from every entry point."""
import json

import pytest
import torch

import export_model
import generate_samples
from generation.pipeline import Pipeline
from model import CogViewGPT, ModelConfig
from tests.generation_helpers import write_tiny_checkpoint
from utils.errors import UserError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_generate_samples_refuses_a_flag_contradicting_model_config_json(checkpoint, tmp_path):
    with pytest.raises(UserError, match=r"^pb_relax=True \(--pb-relax / --no-pb-relax\) contradicts .*model_config"
                                        r"\.json, which records pb_relax=False"):
        generate_samples.main(["--load", str(checkpoint), "--prompt", "a red circle", "--pb-relax",
                               "--output-path", str(tmp_path / "out"), "--device", "cpu"])
    with pytest.raises(UserError, match="records layernorm_order='sandwich'"):
        Pipeline.from_checkpoint(checkpoint, layernorm_order="pre")
    assert not Pipeline.from_checkpoint(checkpoint, pb_relax=False).model.config.pb_relax


def test_export_records_the_settings_a_release_checkpoint_was_loaded_with(tmp_path):
    """A folder without model_config.json (CogView's layout) takes PB-relax on; --no-pb-relax and
    --pb-relax-alpha change that, and the export writes down what was used."""
    model = CogViewGPT(ModelConfig(vocab_size=100, num_layers=2, hidden_size=64, num_attention_heads=1,
                                   max_position_embeddings=20))
    (tmp_path / "run" / "5").mkdir(parents=True)
    torch.save({"module": model.state_dict()}, tmp_path / "run" / "5" / "mp_rank_00_model_states.pt")
    (tmp_path / "run" / "latest_checkpointed_iteration.txt").write_text("5")
    export_model.main(["--load", str(tmp_path / "run"), "--output", str(tmp_path / "relaxed")])
    export_model.main(["--load", str(tmp_path / "run"), "--output", str(tmp_path / "plain"), "--no-pb-relax",
                       "--pb-relax-alpha", "32"])
    relaxed, plain = (json.loads((tmp_path / name / "model_config.json").read_text()) for name in ("relaxed", "plain"))
    assert (relaxed["pb_relax"], relaxed["pb_relax_alpha"]) == (True, None)
    assert (plain["pb_relax"], plain["pb_relax_alpha"]) == (False, 32.0)
