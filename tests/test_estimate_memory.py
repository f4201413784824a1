"""scripts/estimate_memory.py: the byte counts per ZeRO stage and tensor-parallel size."""
import subprocess
import sys

import pytest

from model.config import ModelConfig, count_parameters
from scripts.estimate_memory import FP32_MASTER_AND_ADAM, HALF_WEIGHTS_AND_GRADS, main, per_gpu_bytes, tp_sizes
from utils.errors import UserError

P = 1_000_000


def test_one_gpu_holds_every_byte_at_every_stage():
    full = (HALF_WEIGHTS_AND_GRADS + FP32_MASTER_AND_ADAM) * P
    assert per_gpu_bytes(0, P, 0, 1) == full
    assert per_gpu_bytes(1, P, 0, 1) == full
    assert per_gpu_bytes(2, P, 0, 1) == full + 4 * P  # DeepSpeed's estimator also counts fp32 gradients


def test_stages_partition_more_as_they_go():
    """Stage 1 partitions the fp32 states, 2 the gradients too, 3 the weights too (plus one gathered layer)."""
    ranks = 8
    assert per_gpu_bytes(1, P, 0, ranks) == 4 * P + 12 * P // ranks
    assert per_gpu_bytes(3, P, 1000, ranks) == 4 * 1000 + 18 * P // ranks
    sizes = [per_gpu_bytes(stage, P, 1000, ranks) for stage in range(4)]
    assert sizes == sorted(sizes, reverse=True)


def test_tp_sizes_must_split_node_heads_and_width():
    assert tp_sizes("1,2,4", 8, 256, 8) == [1, 2, 4]
    for bad in ("3", "16", "x"):
        with pytest.raises(UserError):
            tp_sizes(bad, 8, 256, 8)


def test_table_for_cogview_4b(capsys):
    main([])
    out = capsys.readouterr().out
    params = count_parameters(ModelConfig(vocab_size=58240, num_layers=48, hidden_size=2560, num_attention_heads=40,
                                          max_position_embeddings=1089))
    assert f"{params / 1e9:.2f}B parameters" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "2", "4", "8"]
    stage0_tp1 = float(rows[0].split("|")[3])
    assert stage0_tp1 == pytest.approx(16 * params / 2**30, abs=0.05)


def test_bad_flag_is_one_line():
    result = subprocess.run([sys.executable, "scripts/estimate_memory.py", "--tp-sizes", "3"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error:")
