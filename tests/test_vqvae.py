"""VQ-VAE: quantiser maths, training signal, layouts, checkpoint I/O, the api and exact resume."""
import json
import signal

import pytest
import torch
from safetensors.torch import load_file

import train_vqvae
from utils.errors import UserError
from vqvae import VQVAE, VQVAEConfig, code2img, cogview_config, img2code, load_vqvae, save_vqvae, vqvae_fingerprint
from vqvae.quantizer import EMAQuantizer

TINY = dict(codebook_size=16, embed_dim=8, hidden_channels=16, num_res_blocks=1, downsample=4)



def blocks_images(batch: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    """White canvases with one solid coloured rectangle each: shapes-like, made here."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.ones(batch, 3, size, size)
    for image in images:
        x0, y0 = torch.randint(0, size // 2, (2,), generator=gen).tolist()
        side = int(torch.randint(size // 4, size // 2, (1,), generator=gen))
        image[:, y0:y0 + side, x0:x0 + side] = torch.rand(3, 1, 1, generator=gen)
    return images


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a.clamp(0, 1) - b).pow(2).mean()))


def test_config_json_round_trip_and_validation():
    config = VQVAEConfig(**TINY, recon_loss="l1", image_mean=(0.1, 0.2, 0.3))
    assert VQVAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(UserError, match="downsample"):
        VQVAEConfig(downsample=16)
    with pytest.raises(UserError, match="unknown VQ-VAE config field"):
        VQVAEConfig.from_dict({**config.to_dict(), "depth": 3})
    with pytest.raises(UserError, match="no residual blocks"):
        VQVAEConfig(layout="cogview", num_res_blocks=2)


def test_overfits_one_small_batch():
    torch.manual_seed(0)
    images = blocks_images()
    model = VQVAE(VQVAEConfig(**{**TINY, "codebook_size": 64, "hidden_channels": 32})).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = psnr(model(images).reconstruction.detach(), images)
    for _ in range(300):
        loss = model(images).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = psnr(code2img(model, img2code(model, images)), images)
    assert end > start + 18 and end > 26, (start, end)


def toy_quantizer(decay: float, threshold: float, embed: list[list[float]], cluster_size: list[float]) -> EMAQuantizer:
    quantizer = EMAQuantizer(len(cluster_size), len(embed), decay=decay, eps=1e-5, dead_code_threshold=threshold)
    quantizer.embed.copy_(torch.tensor(embed))
    quantizer.cluster_size.copy_(torch.tensor(cluster_size))
    quantizer.embed_avg.copy_(quantizer.embed * quantizer.cluster_size)
    return quantizer.train()


def test_ema_update_matches_hand_computation():
    # 1-d codes at 0 and 1; inputs 0.1 and 0.2 pick code 0, input 0.9 picks code 1.
    quantizer = toy_quantizer(decay=0.5, threshold=0.0, embed=[[0.0, 1.0]], cluster_size=[1.0, 1.0])
    out = quantizer(torch.tensor([0.1, 0.2, 0.9]).view(1, 1, 1, 3))
    assert out.codes.tolist() == [[[0, 0, 1]]]
    assert out.counts.tolist() == [2.0, 1.0]
    # The forward pass uses the codebook before the update; commitment = mean squared distance.
    assert torch.allclose(out.quantized.view(-1), torch.tensor([0.0, 0.0, 1.0]))
    assert out.commitment.item() == pytest.approx((0.01 + 0.04 + 0.01) / 3)
    # cluster_size = 0.5 * 1 + 0.5 * [2, 1]; embed_avg = 0.5 * [0, 1] + 0.5 * [0.3, 0.9].
    assert quantizer.cluster_size.tolist() == pytest.approx([1.5, 1.0])
    assert quantizer.embed_avg.view(-1).tolist() == pytest.approx([0.15, 0.95])
    eps, total = 1e-5, 2.5
    smoothed = [(n + eps) / (total + 2 * eps) * total for n in (1.5, 1.0)]
    expected = [0.15 / smoothed[0], 0.95 / smoothed[1]]
    assert quantizer.embed.view(-1).tolist() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx([0.1, 0.95], rel=1e-4)


def test_dead_code_restart_replaces_only_unused_codes():
    torch.manual_seed(0)
    embed = [[0.0, 5.0, 10.0, 15.0], [0.0, 5.0, 10.0, 15.0]]
    quantizer = toy_quantizer(decay=0.99, threshold=0.5, embed=embed, cluster_size=[3.0, 0.1, 2.0, 0.4])
    before = {name: buffer.clone() for name, buffer in quantizer.named_buffers()}
    batch = torch.randn(6, 2) + 100.0
    # Candidates are drawn in proportion to their distance from the codebook: only the last two can win.
    distances = torch.tensor([0.0, 0.0, 0.0, 0.0, 4.0, 9.0])
    assert quantizer.restart_dead_codes(batch, distances) == 2
    live, dead = [0, 2], [1, 3]
    for name, buffer in quantizer.named_buffers():
        assert torch.equal(buffer[..., live], before[name][..., live]), name
    new_codes = quantizer.embed[:, dead].t()
    assert sorted(new_codes[:, 0].tolist()) == sorted(batch[4:, 0].tolist())
    assert quantizer.cluster_size[dead].tolist() == [0.5, 0.5]
    assert torch.allclose(quantizer.embed_avg[:, dead], quantizer.embed[:, dead] * 0.5)
    # Nothing is below the threshold any more, and evaluation never restarts or updates.
    assert quantizer.restart_dead_codes(batch, distances) == 0
    frozen = {name: buffer.clone() for name, buffer in quantizer.named_buffers()}
    quantizer.eval()(torch.zeros(1, 2, 2, 2))
    assert all(torch.equal(buffer, frozen[name]) for name, buffer in quantizer.named_buffers())


def test_untrained_codebook_is_seeded_from_the_first_batch():
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(**TINY)).train()
    images = blocks_images(batch=8)
    encoded = model.encode(images).detach()
    out = model(images)
    # Codes that took inputs moved to their mean; every other code now sits on one of the inputs.
    assert 0 < out.restarted < TINY["codebook_size"]
    quantizer = model.quantize_t
    assert bool((quantizer.cluster_size >= quantizer.dead_code_threshold).all())
    inputs = encoded.permute(0, 2, 3, 1).reshape(-1, TINY["embed_dim"])
    restarted = quantizer.cluster_size == quantizer.dead_code_threshold
    for code in quantizer.embed[:, restarted].t():
        assert (inputs == code).all(1).any()


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(**TINY)).train()
    out = model(blocks_images())
    out.recon_loss.backward()  # the reconstruction only depends on the encoder through the codes
    first_encoder_conv = model.enc_b.blocks[0].weight
    assert first_encoder_conv.grad is not None and first_encoder_conv.grad.abs().sum() > 0
    assert not model.quantize_t.embed.requires_grad


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(**TINY)).train()
    model(blocks_images())  # a training step's codebook update, so the buffers are not the init
    save_vqvae(model, tmp_path / "vq")
    loaded = load_vqvae(tmp_path / "vq")
    assert not loaded.training and loaded.config == model.config
    images = blocks_images(batch=3, seed=1)
    assert torch.equal(img2code(loaded, images), img2code(model, images))
    assert vqvae_fingerprint(loaded) == vqvae_fingerprint(model)
    assert load_vqvae(tmp_path / "vq" / "model.safetensors").config == model.config
    model(images)
    assert vqvae_fingerprint(model) != vqvae_fingerprint(loaded)


def test_img2code_code2img_shapes_ranges_and_errors():
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(**TINY)).eval()
    codes = img2code(model, blocks_images(batch=2, size=16))
    assert codes.shape == (2, 4, 4) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < TINY["codebook_size"]
    images = code2img(model, codes)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    with pytest.raises(UserError, match="not a multiple of the VQ-VAE's downsampling factor 4"):
        img2code(model, torch.rand(1, 3, 18, 16))
    with pytest.raises(UserError, match=r"expected images \[B, 3, H, W\]"):
        img2code(model, torch.rand(3, 16, 16))
    with pytest.raises(UserError, match="codes must lie in"):
        code2img(model, torch.full((1, 2, 2), TINY["codebook_size"]))


# CogView's released VQ-VAE, key for key (docs: ../shared/reference/cogview-facts.md).
COGVIEW_SHAPES = {
    "enc_b.blocks.0.weight": [512, 3, 4, 4], "enc_b.blocks.0.bias": [512],
    "enc_b.blocks.2.weight": [512, 512, 4, 4], "enc_b.blocks.2.bias": [512],
    "enc_b.blocks.4.weight": [512, 512, 4, 4], "enc_b.blocks.4.bias": [512],
    "enc_b.blocks.6.weight": [256, 512, 1, 1], "enc_b.blocks.6.bias": [256],
    "quantize_t.embed": [256, 8192], "quantize_t.cluster_size": [8192], "quantize_t.embed_avg": [256, 8192],
    "dec.blocks.0.weight": [256, 512, 4, 4], "dec.blocks.0.bias": [512],
    "dec.blocks.2.weight": [512, 512, 4, 4], "dec.blocks.2.bias": [512],
    "dec.blocks.4.weight": [512, 512, 4, 4], "dec.blocks.4.bias": [512],
    "dec.blocks.6.weight": [3, 512, 1, 1], "dec.blocks.6.bias": [3],
}


@pytest.fixture(scope="module")
def cogview_state_dict():
    gen = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=gen) * 0.02 for name, shape in COGVIEW_SHAPES.items()}


def test_cogview_layout_loads_a_cogview_state_dict(tmp_path, cogview_state_dict):
    model = VQVAE(cogview_config())
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == COGVIEW_SHAPES
    torch.save({"state_dict": cogview_state_dict}, tmp_path / "nested.pt")
    loaded = load_vqvae(tmp_path / "nested.pt")
    assert torch.equal(loaded.quantize_t.embed, cogview_state_dict["quantize_t.embed"])
    assert loaded.config.image_mean == (0.79093, 0.76271, 0.75340)
    codes = img2code(loaded, torch.rand(1, 3, 16, 16))
    assert codes.shape == (1, 2, 2) and code2img(loaded, codes).shape == (1, 3, 16, 16)


def test_mismatched_checkpoints_fail_with_one_line(tmp_path, cogview_state_dict):
    wrong_shape = dict(cogview_state_dict, **{"enc_b.blocks.0.weight": torch.zeros(128, 3, 4, 4)})
    torch.save(wrong_shape, tmp_path / "wrong.pt")
    with pytest.raises(UserError) as err:
        load_vqvae(tmp_path / "wrong.pt")
    assert str(err.value) == ("checkpoint does not match the VQ-VAE: enc_b.blocks.0.weight is "
                              "[128, 3, 4, 4] in the checkpoint, [512, 3, 4, 4] in the model")
    missing = {k: v for k, v in cogview_state_dict.items() if k != "dec.blocks.6.bias"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(UserError, match="dec.blocks.6.bias is missing from the checkpoint$"):
        load_vqvae(tmp_path / "missing.pt")
    torch.save({"step": 3, "args": [1, 2]}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="holds no state dict"):
        load_vqvae(tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="VQ-VAE not found"):
        load_vqvae(tmp_path / "absent")
    # Our own layout saved with another width fails the same way.
    save_vqvae(VQVAE(VQVAEConfig(**TINY)), tmp_path / "ours")
    config_path = tmp_path / "ours" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "hidden_channels": 32}))
    with pytest.raises(UserError, match=r"enc_b.blocks.0.weight is \[8, 3, 4, 4\] in the checkpoint, "
                                        r"\[16, 3, 4, 4\] in the model"):
        load_vqvae(tmp_path / "ours")


def train_args(output, max_steps: int, *extra: str) -> list[str]:
    return ["--dataset", "shapes", "--image-size", "32", "--train-items", "24", "--val-items", "4",
            "--codebook-size", "16", "--embed-dim", "8", "--hidden-channels", "16", "--num-res-blocks", "1",
            "--batch-size", "4", "--max-steps", str(max_steps), "--eval-every", "2", "--save-every", "3",
            "--dead-code-threshold", "3",  # restarts in every step: resume must restore the RNG they draw from
            "--output", str(output), *extra]


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, monkeypatch):
    result = train_vqvae.main(train_args(tmp_path / "straight", 6))
    assert result["step"] == 6 and 0 < result["codes_used"] <= 1 and 0 <= result["checker_accept"] <= 1

    def ctrl_c_during_step_four(seed, step, *rest):
        if step == 3:
            signal.raise_signal(signal.SIGINT)  # the run finishes this step, saves and stops
        return batch_indices(seed, step, *rest)

    batch_indices = train_vqvae.batch_indices
    monkeypatch.setattr(train_vqvae, "batch_indices", ctrl_c_during_step_four)
    with pytest.raises(KeyboardInterrupt):
        train_vqvae.main(train_args(tmp_path / "resumed", 6))
    monkeypatch.setattr(train_vqvae, "batch_indices", batch_indices)
    assert torch.load(tmp_path / "resumed" / "train_state.pt")["step"] == 4
    with pytest.raises(UserError, match="already holds a training run"):
        train_vqvae.main(train_args(tmp_path / "resumed", 6))
    with pytest.raises(UserError, match="other batch_size"):
        train_vqvae.main(train_args(tmp_path / "resumed", 6, "--resume", "--batch-size", "2"))
    train_vqvae.main(train_args(tmp_path / "resumed", 6, "--resume"))
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_batch_order_is_a_pure_function_of_seed_and_step():
    first = train_vqvae.batch_indices(seed=1, step=2, batch_size=5, num_items=7)
    assert first.tolist() == train_vqvae.batch_indices(seed=1, step=2, batch_size=5, num_items=7).tolist()
    epoch = [train_vqvae.batch_indices(1, step, 7, 7) for step in range(2)]
    assert sorted(epoch[0].tolist()) == list(range(7)) and epoch[0].tolist() != epoch[1].tolist()


def _distributed_quantizer_step(rank: int, folder: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    torch.manual_seed(0)
    quantizer = EMAQuantizer(8, 4, decay=0.9, eps=1e-5, dead_code_threshold=0.5).train()
    torch.manual_seed(1 + rank)  # each rank sees other data and draws other restart candidates
    for _ in range(3):
        quantizer(torch.randn(2, 4, 3, 3) + rank)
    torch.save(dict(quantizer.named_buffers()), f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


def test_codebook_stays_identical_across_distributed_ranks(tmp_path):
    torch.multiprocessing.spawn(_distributed_quantizer_step, args=(str(tmp_path),), nprocs=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2))
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    assert rank0["cluster_size"].sum() > 0
