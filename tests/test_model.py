"""The VITO model: trunk taps, heads, loss, EMA target, BN policy, torchvision-compatible trunk weights."""
from __future__ import annotations

import pytest
import torch
import torchvision

from vito_fast.model import VITO, Trunk
from vito_fast.train.config import load_config
from vito_fast.model.sync_bn import GlobalBatchNorm, convert_sync_batchnorm


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def tiny_vito(**kwargs) -> VITO:
    options = dict(arch="resnet18", pool_hidden=16, proj_hidden=32, proj_dim=16, pred_hidden=32)
    options.update(kwargs)
    return VITO(**options).to(memory_format=torch.channels_last)


def views(batch: int = 4, size: int = 64):
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    return x, x + 0.3 * torch.randn_like(x)


@pytest.mark.parametrize("arch, stages, channels", [
    ("resnet18", ("layer3", "layer4"), [256, 512]),
    ("resnet50", ("layer2", "layer4"), [512, 2048]),
    ("resnet18", ("layer3",), [256]),
])
def test_trunk_taps_and_channels(arch, stages, channels):
    trunk = Trunk(arch, stages)
    assert [trunk.channels(s) for s in trunk.stages] == channels
    if arch == "resnet18":
        taps = trunk(torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last))
        strides = {"layer2": 8, "layer3": 16, "layer4": 32}
        assert [tuple(t.shape) for t in taps] == [(2, c, 64 // strides[s], 64 // strides[s])
                                                 for s, c in zip(stages, channels)]
    # Stages after the last tap are not built (they would get no gradient under DDP).
    assert hasattr(trunk, "layer4") == ("layer4" in stages)


def test_trunk_rejects_unknown_arch_and_stage():
    with pytest.raises(ValueError, match="vit_b_16"):
        Trunk("vit_b_16", ("layer4",))
    with pytest.raises(ValueError, match="layer5"):
        Trunk("resnet18", ("layer5",))


def test_forward_loss_per_stage_and_target_gets_no_gradient():
    model = tiny_vito()
    loss, parts = model(*views())
    assert set(parts) == {"layer3", "layer4"}
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    torch.testing.assert_close(loss, parts["layer3"] + parts["layer4"])
    loss.backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert all(p.grad is not None for p in model.online.parameters())
    assert all(p.grad is not None for p in model.predictors.parameters())
    # The attention maps of the last forward: (2B, H, W), a distribution over positions.
    maps = model.attention_maps()
    assert maps["layer3"].shape == (8, 4, 4) and maps["layer4"].shape == (8, 2, 2)
    torch.testing.assert_close(maps["layer3"].sum((1, 2)), torch.ones(8))
    assert not any(attention.requires_grad for attention in maps.values())


def graph_attached_state(module: torch.nn.Module):
    """(module name, attribute) of every tensor a module holds, outside its parameters and buffers,
    that carries a graph (directly, or in a list, tuple or dict)."""
    found = []
    for name, sub in module.named_modules():
        for attribute, value in vars(sub).items():
            if attribute in ("_parameters", "_buffers", "_modules"):
                continue
            values = (value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple))
                      else [value])
            if any(isinstance(item, torch.Tensor) and item.grad_fn is not None for item in values):
                found.append((name, attribute))
    return found


@pytest.mark.parametrize("floor", [0.0, 0.5])
def test_no_module_keeps_a_tensor_with_its_graph(floor):
    """The attention reaches the loss as the pools return it; what the model keeps is detached."""
    model = tiny_vito(attention_entropy_floor=floor)
    loss, _ = model(*views())
    assert graph_attached_state(model) == []
    loss.backward()


def test_info_nce_gets_the_heads_dtype_under_autocast(monkeypatch):
    """Under bf16 autocast the loss takes bf16 queries and keys (the kernels' tensor-core path on a
    GPU, float32 accumulation); without autocast float32. The loss itself is float32 either way."""
    model = tiny_vito()
    seen = []
    forward = model.criterion.forward

    def recording(q, k):
        seen.append((q.dtype, k.dtype))
        return forward(q, k)

    monkeypatch.setattr(model.criterion, "forward", recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model(*views())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}
    seen.clear()
    model(*views())
    assert set(seen) == {(torch.float32, torch.float32)}


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_trunk_runs_in_the_memory_format_of_its_weights(memory_format):
    model = VITO("resnet18", pool_hidden=16, proj_hidden=32, proj_dim=16, pred_hidden=32).to(memory_format=memory_format)
    assert model.memory_format() == memory_format
    seen = []
    model.online.trunk.layer3.register_forward_hook(lambda module, args, out: seen.append(out))
    model(*views())  # channels_last inputs, as the loaders deliver them
    assert seen[0].is_contiguous(memory_format=memory_format)


def test_average_pooling_ablation_has_no_attention_parameters():
    model = tiny_vito(pooling="average")
    attention = tiny_vito()
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in attention.parameters())
    loss, _ = model(*views())
    loss.backward()
    assert torch.isfinite(loss) and model.attention_maps() == {}


def test_loss_is_symmetric_in_the_views():
    model = tiny_vito()
    view1, view2 = views()
    loss_a, _ = model(view1, view2)
    loss_b, _ = model(view2, view1)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-4)  # BN sums in another order


def test_ema_update_matches_hand_computation():
    model = tiny_vito()
    with torch.no_grad():  # move the online network away from the target
        for p in model.online.parameters():
            p.add_(torch.randn_like(p))
        for b in model.online.buffers():
            if b.is_floating_point():
                b.add_(torch.rand_like(b))
    momentum = 0.9
    before = [t.clone() for t in model.target.parameters()]
    model.update_target(momentum)
    for t_before, t_after, online in zip(before, model.target.parameters(), model.online.parameters()):
        torch.testing.assert_close(t_after, momentum * t_before + (1 - momentum) * online)
    # BN policy: the target's buffers are copies of the online ones.
    for t, o in zip(model.target.buffers(), model.online.buffers()):
        assert torch.equal(t, o)
    # momentum 1 keeps the target; momentum 0 copies the online network.
    snapshot = [t.clone() for t in model.target.parameters()]
    model.update_target(1.0)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, model.target.parameters()))
    model.update_target(0.0)
    assert all(torch.equal(t, o) for t, o in zip(model.target.parameters(), model.online.parameters()))


def test_trunk_weights_load_into_torchvision_with_only_fc_missing():
    model = tiny_vito(arch="resnet18")
    resnet = torchvision.models.resnet18()
    result = resnet.load_state_dict(model.trunk_state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    assert torch.equal(resnet.layer4[1].conv2.weight, model.online.trunk.layer4[1].conv2.weight)


def test_narrow_trunk_scales_every_stage_and_keeps_torchvision_names():
    narrow, full = Trunk("resnet18", ("layer3", "layer4"), width=32), Trunk("resnet18", ("layer3", "layer4"))
    assert narrow.channels("layer3") == 128 and narrow.channels("layer4") == 256 and narrow.conv1.out_channels == 32
    assert list(narrow.state_dict()) == list(full.state_dict())  # same blocks and names, fewer channels
    maps = narrow(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 128, 4, 4), (2, 256, 2, 2)]
    parameters = sum(p.numel() for p in narrow.parameters())
    assert 0.2 < parameters / sum(p.numel() for p in full.parameters()) < 0.3  # about (32/64)^2
    model = VITO.from_config(load_config(preset="demo", overrides=["model.width=32"]).model)
    assert model.online.trunk.channels("layer4") == 256 and model.target.trunk.width == 32
    from vito_fast.model.vito import build_resnet

    result = build_resnet("resnet18", 32).load_state_dict(narrow.state_dict(), strict=True)  # exported weights load
    assert not result.missing_keys and not result.unexpected_keys
    with pytest.raises(ValueError, match="multiple of 8"):
        Trunk("resnet18", ("layer4",), width=20)
    with pytest.raises(ValueError, match="plain ResNets"):
        Trunk("wide_resnet50_2", ("layer4",), width=32)


def test_global_batchnorm_is_batchnorm_in_one_process():
    model = tiny_vito()
    reference = tiny_vito()
    reference.load_state_dict(model.state_dict())
    converted = convert_sync_batchnorm(model, "cpu")
    assert any(isinstance(m, GlobalBatchNorm) for m in converted.modules())
    assert not any(type(m) in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d) for m in converted.modules())
    assert not any(p.requires_grad for p in converted.target.parameters())  # the target stays frozen
    view1, view2 = views()
    torch.testing.assert_close(converted(view1, view2)[0], reference(view1, view2)[0])
    torch.testing.assert_close(converted.online.trunk.bn1.running_var, reference.online.trunk.bn1.running_var)


def test_entropy_floor_pushes_back_only_collapsed_attention():
    """model.attention_entropy_floor: a loss of relu(floor · log(HW) − entropy) per map, zero for spread maps,
    with a gradient into the pools when a map collapses; evaluation and floor 0 add nothing."""
    import math

    torch.manual_seed(0)
    model = VITO("resnet18", pool_hidden=16, proj_hidden=32, proj_dim=16, pred_hidden=32, width=16,
                 backend="torch", attention_entropy_floor=0.5)
    views = torch.randn(2, 4, 3, 64, 64)
    total, losses = model(views[0], views[1])
    # at initialisation the maps are nearly uniform: above half of the largest entropy, no extra loss
    assert torch.allclose(total, sum(losses.values()))
    assert float(model.attention_entropy_loss(model.attention_maps())) == 0.0
    with torch.no_grad():  # a pool whose logits single out one position
        model.online.pools[0].w2.mul_(30.0)
    total, losses = model(views[0], views[1])
    flat = model.attention_maps()[model.stages[0]].flatten(1)
    entropy = -(flat * flat.clamp_min(1e-12).log()).sum(1)
    expected = torch.relu(0.5 * math.log(flat.shape[1]) - entropy).mean()
    assert float(expected) > 0.05 and torch.allclose(total - sum(losses.values()), expected, atol=1e-5)
    model.zero_grad()  # the maps the online encoder returns carry the graph into the pools
    model.attention_entropy_loss(model.online(torch.cat([views[0], views[1]])).attention).backward()
    assert model.online.pools[0].w2.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="attention_entropy_floor"):
        VITO("resnet18", attention_entropy_floor=1.0)


def test_model_config_builds_the_model_by_name():
    """Each ModelConfig field is a VITO argument (or read by the training loop), passed by name."""
    import dataclasses
    import inspect

    from vito_fast.model.config import TRAINING_FIELDS, ModelConfig

    arguments = inspect.signature(VITO).parameters
    for field in dataclasses.fields(ModelConfig):
        assert field.name in arguments or field.name in TRAINING_FIELDS, field.name
    config = ModelConfig(arch="resnet18", width=16, stages=("layer4",), pool_hidden=8, proj_hidden=24,
                         proj_dim=12, pred_hidden=20, temperature=0.2, attention_entropy_floor=0.25)
    model = VITO.from_config(config)
    assert model.stages == ("layer4",) and model.online.trunk.conv1.out_channels == 16
    assert model.online.projectors[0][-1].out_features == 12 and model.predictors[0][0].out_features == 20
    assert model.criterion.temperature == 0.2 and model.attention_entropy_floor == 0.25
