"""ViT trunks (issue 28): timm ViTs tapped at several depths, their token grids through the attention pool,
AdamW, training, resume, export to timm, evaluation, viz and DDP, all on a tiny ViT (patch 8, 32 wide, 3 blocks)
at 32 px; the presets' ViT-S/B trunks are built once (no download)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

timm = pytest.importorskip("timm", reason="ViT trunks need timm: pip install 'vito_fast[vit]'")

from vito_fast.model.config import ViTConfig  # noqa: E402
from vito_fast.model.vit import ViTTrunk, block_indices, token_grid  # noqa: E402
from vito_fast.train.config import load_config  # noqa: E402

TINY_VIT = ViTConfig(patch_size=8, embed_dim=32, depth=3, num_heads=2)
TINY = ["data.source=synthetic", "data.image_size=32", "data.batch_size=4", "data.steps_per_epoch=3",
        "model.pool_hidden=16", "model.proj_hidden=32", "model.proj_dim=16", "model.pred_hidden=32",
        "model.vit.embed_dim=32", "model.vit.depth=3", "model.vit.num_heads=2", "model.stages=[block2,block3]",
        "optim.warmup_steps=2", "train.log_every=1", "train.image_every=2", "train.progress=false",
        "train.device=cpu"]
TIMM_ARGUMENTS = dict(num_classes=0, patch_size=8, embed_dim=32, depth=3, num_heads=2)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def tiny(*overrides: str):
    return load_config("vit_demo", overrides=TINY + list(overrides))


def test_token_grid_is_a_channels_last_view_of_the_tokens():
    tokens = torch.randn(2, 1 + 3 * 5, 8)  # a class token, then a 3 x 5 grid
    grid = token_grid(tokens, 1, 3, 5, include_prefix=False)
    assert grid.shape == (2, 8, 3, 5) and grid.stride(1) == 1  # channels innermost
    assert grid.data_ptr() == tokens[:, 1:].data_ptr() and grid.flatten(2).data_ptr() == grid.data_ptr()
    torch.testing.assert_close(grid[1, :, 2, 4], tokens[1, 1 + 2 * 5 + 4])
    every = token_grid(tokens, 1, 3, 5, include_prefix=True)
    assert every.shape == (2, 8, 1, 16) and every.is_contiguous(memory_format=torch.channels_last)
    assert every.data_ptr() == tokens.data_ptr()
    with pytest.raises(ValueError, match="block1 … block3.*block2,block3"):
        block_indices(("layer3", "layer4"), 3, "vit_tiny_patch16_224")


def test_fused_attention_pool_takes_token_grids(kernel_device):
    """The Triton kernels (interpreted on a CPU) on the strided token grid equal the reference, forward and backward."""
    from vito_fast.ops.attention_pool import attention_pool

    torch.manual_seed(0)
    tokens = torch.randn(2, 1 + 3 * 4, 24, device=kernel_device, dtype=torch.float32, requires_grad=True)
    w1, b1, w2 = (torch.randn(*shape, device=kernel_device) / 4 for shape in ((8, 24), (8,), (8,)))
    upstream = torch.randn(2, 24, device=kernel_device)
    results = []
    for backend in ("triton", "torch"):
        tokens.grad = None
        pooled, attention = attention_pool(token_grid(tokens, 1, 3, 4, False), w1, b1, w2, backend=backend)
        (pooled * upstream).sum().backward()
        results.append((pooled, attention, tokens.grad.clone()))
    for fused, reference in zip(*results):
        torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-5)
    assert results[0][2][:, 0].abs().max() == 0  # the class token is not pooled


def test_vit_trunk_taps_normed_blocks_at_any_image_size():
    torch.manual_seed(0)
    trunk = ViTTrunk("vit_tiny_patch16_224", ("block3", "block1"), TINY_VIT).eval()
    assert trunk.stages == ("block1", "block3") and trunk.channels("block1") == 32
    images = torch.randn(2, 3, 32, 48)  # not the arch's 224: position embeddings interpolated to 4 x 6
    with torch.no_grad():
        first, last = trunk(images)
        features = trunk.vit.forward_features(images)
    assert first.shape == last.shape == (2, 32, 4, 6)
    torch.testing.assert_close(last.permute(0, 2, 3, 1).reshape(2, 24, 32), features[:, 1:])
    assert len(ViTTrunk("vit_tiny_patch16_224", ("block2",), TINY_VIT).vit.blocks) == 2  # no block without a gradient


def test_adamw_groups_and_weight_decay_schedule():
    from vito_fast.model.vito import VITO
    from vito_fast.train.optimizers import build_optimizer, set_step_values
    from vito_fast.train.schedules import weight_decay

    config = tiny()
    model = VITO.from_config(config.model)
    optimizer = build_optimizer(model, config.optim)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, plain = ({names[id(p)] for p in group["params"]} for group in optimizer.param_groups)
    assert "online.trunk.vit.blocks.0.attn.qkv.weight" in decayed and "online.projectors.0.0.weight" in decayed
    for name in ("online.trunk.vit.pos_embed", "online.trunk.vit.cls_token", "online.trunk.vit.norm.weight",
                 "online.trunk.vit.blocks.0.attn.qkv.bias", "online.pools.0.w2"):
        assert name in plain
    assert not any(name.startswith("target.") for name in decayed | plain)
    assert weight_decay(0, total_steps=10, start=0.04, end=0.4) == pytest.approx(0.04)
    assert weight_decay(5, total_steps=10, start=0.04, end=0.4) == pytest.approx(0.22)
    assert weight_decay(10, total_steps=10, start=0.04, end=0.4) == pytest.approx(0.4)
    assert weight_decay(7, total_steps=10, start=0.05) == 0.05
    set_step_values(optimizer, 0.5, 0.3)
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.5, 0.3), (0.5, 0.0)]


def test_presets_build_vit_s16_and_b16_trunks():
    for preset, width in (("vit_s16", 384), ("vit_b16", 768)):
        model = load_config(preset).model
        trunk = ViTTrunk(model.arch, model.stages, model.vit)
        assert trunk.stages == ("block8", "block12") and trunk.channels("block12") == width
        assert trunk.vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    optim = load_config("vit_s16").optim
    assert (optim.optimizer, optim.weight_decay, optim.weight_decay_end) == ("adamw", 0.04, 0.4)


def test_vit_run_trains_resumes_exports_to_timm_and_evaluates(tmp_path, capsys):
    from vito_fast.cli import export as export_cli
    from vito_fast.eval.encoder import ViTEvalEncoder, load_encoder
    from vito_fast.eval.features import extract_features
    from vito_fast.train.loop import train

    straight = train(tiny("train.steps=3", "train.checkpoint_every=3"), tmp_path / "straight")
    assert all(map(lambda value: value == value, straight.losses)) and set(straight.stage_losses[0]) == {"block2",
                                                                                                        "block3"}
    train(tiny("train.steps=3", "train.checkpoint_every=1", "train.stop_after=2"), tmp_path / "run")
    resumed = train(tiny("train.steps=3", "train.checkpoint_every=1"), tmp_path / "run", resume=True)
    torch.testing.assert_close(resumed.losses, straight.losses[2:], rtol=0, atol=1e-5)

    exported = tmp_path / "encoder.pth"
    assert export_cli.main([str(tmp_path / "run"), "-o", str(exported)]) == 0
    assert "strict, every key" in capsys.readouterr().out
    timm.create_model("vit_tiny_patch16_224", pretrained=False, **TIMM_ARGUMENTS).load_state_dict(
        torch.load(exported), strict=True)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True, **TIMM_ARGUMENTS)
    vit.load_state_dict(torch.load(exported), strict=True)  # and at 32 px (position embeddings interpolated)
    assert export_cli.main([str(tmp_path / "run"), "-o", str(exported), "--format", "torchvision"]) == 1

    encoder = load_encoder(tmp_path / "run")
    assert isinstance(encoder, ViTEvalEncoder) and encoder.stages == ("block3",)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images)[0].mean(dim=(2, 3)),
                                   vit.eval().forward_features(images)[:, 1:].mean(dim=1))
    with pytest.raises(ValueError, match="32 wide, vit_tiny_patch16_224 is 192.*--format vito"):
        load_encoder(exported, arch="vit_tiny_patch16_224")  # a custom width: the heads are not in the weights
    assert export_cli.main([str(tmp_path / "run"), "-o", str(tmp_path / "vito.pt"), "--format", "vito"]) == 0
    from_file = load_encoder(tmp_path / "vito.pt")
    frames = torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8).numpy()
    torch.testing.assert_close(extract_features(from_file, frames), extract_features(encoder, frames))
    pooled = load_encoder(tmp_path / "run", pooling="attention")
    vectors = pooled(images)
    assert [tuple(v.shape) for v in vectors] == [(2, 32), (2, 32)]
    assert {stage: tuple(a.shape) for stage, a in pooled.last_attention.items()} == {"block2": (2, 4, 4),
                                                                                      "block3": (2, 4, 4)}
    # label propagation takes the run's last tapped block by default (a ResNet's default, layer3, is no block)
    pytest.importorskip("av", reason="PyAV is not installed: the built-in videos are written with it")
    from vito_fast.cli.main import main
    from vito_fast.synthetic import generate_dataset

    dataset = generate_dataset(tmp_path / "data", num_classes=2, videos_per_class=1, num_frames=4, size=(32, 32),
                               progress=False)
    output = tmp_path / "propagate.json"
    assert main(["eval", "propagate", "--synthetic", str(dataset.root), "--run", str(tmp_path / "run"),
                 "--max-videos", "1", "--output", str(output)]) == 0
    import json

    result = json.loads(output.read_text())
    assert result["stage"] == "block3" and 0.0 <= result["J"] <= 1.0


def test_prefix_tokens_included_in_the_pool():
    from vito_fast.model.vito import VITO

    model = VITO.from_config(tiny("model.vit.prefix_tokens=include").model)
    loss, _ = model(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    loss.backward()
    maps = model.attention_maps()["block3"]
    assert maps.shape == (4, 4, 4) and bool((maps.sum(dim=(1, 2)) < 1).all())  # the class token holds the rest
    with pytest.raises(ValueError, match="prefix_tokens"):
        VITO.from_config(tiny("model.vit.prefix_tokens=cls").model)


@pytest.mark.usefixtures("pyav")
def test_viz_attention_per_depth(tmp_path, capsys):
    from vito_fast.cli.main import main
    from vito_fast.synthetic import generate_dataset
    from vito_fast.train.loop import train

    train(tiny("train.steps=1", "train.checkpoint_every=1", "train.image_every=1"), tmp_path / "run")
    dataset = generate_dataset(tmp_path / "data", num_classes=1, videos_per_class=1, num_frames=4, size=(48, 64),
                               progress=False)
    output = tmp_path / "attention.png"
    assert main(["viz", "attention", str(tmp_path / "run"), dataset.videos[0].path, "-o", str(output),
                 "--frames", "2", "--display-height", "48"]) == 0
    summary = json.loads(output.with_suffix(".json").read_text())
    assert summary["attention_shape"] == {"block2": [4, 5], "block3": [4, 5]}  # 32 x 42 px in patches of 8


def test_missing_timm_is_one_line_and_import_never_needs_it():
    code = ("import sys; sys.modules['timm'] = None\n"
            "import vito_fast, vito_fast.train.config, vito_fast.model.vito\n"
            "from vito_fast.model.vito import VITO\n"
            "VITO.from_config(vito_fast.train.config.load_config('vit_s16').model)\n")
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert finished.returncode == 1
    assert finished.stderr.strip().splitlines()[-1] == \
        "ImportError: ViT trunks need timm: pip install 'vito_fast[vit]'"


def _ddp_worker(rank: int, run_dir: str, init_file: str) -> None:
    from vito_fast.train.loop import train

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        train(tiny("train.steps=2", "train.checkpoint_every=2", "data.batch_size=2"), run_dir)
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_vit_run_equals_one_process_run(tmp_path):
    import torch.multiprocessing as mp

    from vito_fast.train.checkpoint import load_checkpoint
    from vito_fast.train.loop import train

    mp.spawn(_ddp_worker, args=(str(tmp_path / "ddp"), str(tmp_path / "init")), nprocs=2, join=True)
    single = train(tiny("train.steps=2", "train.checkpoint_every=2", "data.batch_size=4"), tmp_path / "single")
    ddp = [json.loads(line)["loss"] for line in open(tmp_path / "ddp" / "metrics.jsonl") if '"loss"' in line]
    torch.testing.assert_close(ddp, single.losses, rtol=1e-4, atol=1e-4)
    key = "online.trunk.vit.blocks.2.mlp.fc2.weight"
    torch.testing.assert_close(load_checkpoint(tmp_path / "ddp")["model"][key],
                               load_checkpoint(tmp_path / "single")["model"][key], rtol=1e-3, atol=1e-5)
