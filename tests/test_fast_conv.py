"""The rewritten CPU convolutions (`model.fast_conv`): Winograd F(4x4, 3x3) and F(3x3, 4x4) for
3x3 and 4x4 layers (src/nets/winograd*.py), small transposed convolutions as products
and convolutions into small outputs as products (src/nets/gemm_conv.py, src/nets/skinny_products.py), the narrow-output backward (src/nets/narrow_conv.py) and instance norm by group norm
(src/nets/instance_norm.py).
Same results as torch's convolutions, only where they apply, clear errors when they cannot be
built."""
import copy
import io
import logging

import hydra
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import fit_one_batch, random_batch
from src.nets import fast_conv, winograd, winograd_build
from src.nets.fast_conv import configure_fast_conv
from src.nets import gemm_conv, skinny_products
from src.nets.gemm_conv import (GemmConv2d, GemmConvTranspose2d, conv2d_as_product, conv_transpose2d_as_product,
                                use_gemm_conv)
from src.nets.instance_norm import InstanceNormAsGroupNorm, use_group_norm_for_instance_norm
from src.nets.narrow_conv import NarrowOutputConv2d, use_narrow_output
from src.nets.winograd import Padding, ReflectionPadInNextLayer, WinogradConv2d, use_winograd, winograd_conv
from src.nets.winograd_build import WinogradUnavailable

try:
    winograd_build._compiler()
except WinogradUnavailable:
    pytest.skip("no C compiler on this machine: the Winograd kernels cannot be built", allow_module_level=True)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("r", [3, 4])   # F(4x4, 3x3) and F(3x3, 4x4)
@pytest.mark.parametrize("n,c,h,w,k,bias", [
    (1, 3, 6, 6, 5, True),      # exactly one tile
    (2, 4, 10, 11, 6, False),   # a batch; the width needs a partial tile
    (3, 5, 17, 14, 7, True),    # partial tiles both ways
    (1, 1, 4, 4, 1, True),      # the smallest inputs: a single output or four
    (1, 16, 34, 34, 8, False),  # a residual-block-like shape
])
def test_matches_conv2d_forward_and_backward(r, n, c, h, w, k, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=gen, requires_grad=True)
    weight = torch.randn(k, c, r, r, generator=gen, requires_grad=True)
    b = torch.randn(k, generator=gen, requires_grad=True) if bias else None
    inputs = (x, weight) + ((b,) if bias else ())
    expected = F.conv2d(x, weight, b)
    result = winograd_conv(x, weight, b)
    assert result.shape == expected.shape
    assert relative_error(result, expected) < 1e-5
    grad_out = torch.randn(expected.shape, generator=gen)
    for got, want in zip(torch.autograd.grad(result, inputs, grad_out),
                         torch.autograd.grad(expected, inputs, grad_out)):
        assert relative_error(got, want) < 1e-5


def test_buffers_above_the_kept_size_are_not_kept_and_the_results_stay_right(monkeypatch):
    """A full-resolution photo's buffers reach GBs: kept, they stayed with the thread for the
    life of the process. Here every buffer is above a lowered limit: none is kept, and the
    forward, backward and the weight-transform reuse still compute the convolution."""
    monkeypatch.setattr(winograd, "MAX_KEPT_SCRATCH", 64)
    winograd._scratch_buffers.__dict__.clear()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 10, 11, generator=gen, requires_grad=True)
    weight = torch.randn(6, 4, 3, 3, generator=gen, requires_grad=True)
    for _ in range(2):   # the second time with the same weight
        result, expected = winograd_conv(x, weight), F.conv2d(x, weight)
        assert relative_error(result, expected) < 1e-5
        grad_out = torch.randn(expected.shape, generator=gen)
        for got, want in zip(torch.autograd.grad(result, (x, weight), grad_out),
                             torch.autograd.grad(expected, (x, weight), grad_out)):
            assert relative_error(got, want) < 1e-5
    kept = {slot: buffer.numel() for slot, buffer in winograd._scratch_buffers.__dict__.items()
            if isinstance(buffer, torch.Tensor)}
    assert all(numel <= 64 for numel in kept.values()), kept


def test_computes_only_the_gradients_asked_for():
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    frozen_weight = torch.randn(4, 4, 3, 3)
    (grad_x,) = torch.autograd.grad(winograd_conv(x, frozen_weight).sum(), (x,))
    expected_x, = torch.autograd.grad(F.conv2d(x, frozen_weight).sum(), (x,))
    assert relative_error(grad_x, expected_x) < 1e-5
    weight = frozen_weight.clone().requires_grad_()
    (grad_w,) = torch.autograd.grad(winograd_conv(x.detach(), weight).sum(), (weight,))
    expected_w, = torch.autograd.grad(F.conv2d(x.detach(), weight).sum(), (weight,))
    assert relative_error(grad_w, expected_w) < 1e-5


def test_rejects_what_it_cannot_compute():
    with pytest.raises(ValueError, match="3x3 or 4x4"):
        winograd_conv(torch.randn(1, 2, 8, 8), torch.randn(2, 2, 5, 5))
    with pytest.raises(ValueError, match="at least as large"):
        winograd_conv(torch.randn(1, 2, 3, 8), torch.randn(2, 2, 4, 4))


@pytest.mark.parametrize("r", [3, 4])
@pytest.mark.parametrize("h,w,pad", [
    (9, 9, Padding(1, 1, reflect=True)),    # the residual blocks' pad
    (7, 10, Padding(2, 1, reflect=True)),   # unequal rows and columns, partial tiles
    (5, 4, Padding(3, 3, reflect=True)),    # as wide as reflection allows (pad < side)
    (6, 11, Padding(1, 2)),                 # zeros
])
def test_padding_applied_while_reading_matches_a_padded_input(r, h, w, pad):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, h, w, generator=gen, requires_grad=True)
    weight = torch.randn(4, 5, r, r, generator=gen, requires_grad=True)
    bias = torch.randn(4, generator=gen)
    padded = F.pad(x, (pad.columns, pad.columns, pad.rows, pad.rows), mode="reflect" if pad.reflect else "constant")
    expected = F.conv2d(padded, weight, bias)
    result = winograd_conv(x, weight, bias, pad)
    assert result.shape == expected.shape
    assert relative_error(result, expected) < 1e-5
    grad_out = torch.randn(expected.shape, generator=gen)
    for got, want in zip(torch.autograd.grad(result, (x, weight), grad_out),
                         torch.autograd.grad(expected, (x, weight), grad_out)):
        assert relative_error(got, want) < 1e-5


def test_reflection_wider_than_the_input_is_refused():
    with pytest.raises(ValueError, match="reflection padding must be smaller than the input"):
        winograd_conv(torch.randn(1, 2, 3, 8), torch.randn(2, 2, 3, 3), pad=Padding(3, 1, reflect=True))


def test_reflection_pad_before_a_winograd_layer_moves_into_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(4, 4, 3),           # merged
                        nn.ReflectionPad2d((1, 2, 1, 1)), nn.Conv2d(4, 4, 3),   # uneven: kept
                        nn.ReflectionPad2d(1), nn.Conv2d(4, 4, 3, stride=2))    # not a Winograd layer: kept
    reference, keys = copy.deepcopy(net), list(net.state_dict())
    assert use_winograd(net) == 2
    assert [type(m).__name__ for m in net] == ["ReflectionPadInNextLayer", "WinogradConv2d", "ReflectionPad2d",
                                               "WinogradConv2d", "ReflectionPad2d", "Conv2d"]
    assert net[1].merged_reflection == (1, 1) and net[3].merged_reflection == (0, 0)
    assert list(net.state_dict()) == keys
    x = torch.randn(2, 4, 12, 12, requires_grad=True)
    expected = reference(x)
    grad_out = torch.randn(expected.shape)
    want = torch.autograd.grad(expected, (x, reference[1].weight), grad_out)
    result = net(x)
    assert relative_error(result, expected) < 1e-5
    for got, ref in zip(torch.autograd.grad(result, (x, net[1].weight), grad_out), want):
        assert relative_error(got, ref) < 1e-5
    # off the Winograd path (float64 here) the layer pads by itself, as the pad it replaced
    assert relative_error(net.double()(x.double()), reference.double()(x.double())) < 1e-12
    # both layers back to torch's classes (the benchmark's A/B switch) restore the pair
    for layer in net[:2]:
        layer.__class__ = type(layer).__mro__[1]
    assert relative_error(net(x.double()), reference(x.double())) < 1e-12


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_switched_layer_keeps_its_parameters_state_and_result(padding_mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 3, padding=1, padding_mode=padding_mode)
    net = nn.Sequential(conv, nn.ReLU())
    x = torch.randn(2, 6, 9, 9)
    expected, keys = net(x), list(net.state_dict())
    weight = conv.weight
    assert use_winograd(net) == 1
    assert type(conv) is WinogradConv2d and conv.weight is weight  # same module, same Parameter
    assert list(net.state_dict()) == keys
    assert relative_error(net(x), expected) < 1e-5
    buffer = io.BytesIO()
    torch.save(net, buffer)  # pickles as WinogradConv2d and comes back as one
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    assert type(restored[0]) is WinogradConv2d
    assert type(copy.deepcopy(net)[0]) is WinogradConv2d


def test_switches_only_plain_3x3_stride_1_convolutions():
    net = nn.Sequential(
        nn.Conv2d(4, 4, 3),                # yes
        nn.Conv2d(4, 4, 3, stride=2),      # stride
        nn.Conv2d(4, 4, 4),                # yes: 4x4
        nn.Conv2d(4, 4, 5),                # kernel size
        nn.Conv2d(4, 4, 3, dilation=2),    # dilation
        nn.Conv2d(4, 4, 3, groups=2),      # groups
        nn.ConvTranspose2d(4, 4, 3),       # not a Conv2d
        nn.Conv2d(256, 4, 3),              # yes, and the only one with >= 128 input channels
    )
    assert use_winograd(copy.deepcopy(net), min_channels=128) == 1
    assert use_winograd(net) == 3
    switched = [type(m) is WinogradConv2d for m in net]
    assert switched == [True, False, True, False, False, False, False, True]


def test_small_outputs_skip_winograd_under_a_pixel_minimum(monkeypatch):
    conv = nn.Conv2d(3, 3, 4, padding=1)
    use_winograd(conv, min_output_pixels=100)
    calls = []
    monkeypatch.setattr(winograd, "winograd_conv",
                        lambda x, weight, bias, pad: calls.append(x.shape) or F.conv2d(x, weight, bias, padding=1))
    conv(torch.randn(1, 3, 11, 11))     # 10 x 10 outputs: Winograd
    conv(torch.randn(1, 3, 10, 10))     # 9 x 9: below the minimum, not Winograd
    assert calls == [torch.Size([1, 3, 11, 11])]


def test_below_the_pixel_minimum_layers_run_as_products_where_they_pay(monkeypatch):
    k4, k3 = nn.Conv2d(3, 5, 4, padding=1), nn.Conv2d(3, 5, 3, padding=1)
    reflected = nn.Conv2d(3, 5, 4, padding=1, padding_mode="reflect")
    reference = copy.deepcopy(k4)
    for layer in (k4, k3, reflected):
        use_winograd(layer, min_output_pixels=100)
    products = count_product_calls(monkeypatch)
    monkeypatch.setattr(winograd, "winograd_conv", lambda *args: pytest.fail("below the minimum"))
    x = torch.randn(2, 3, 5, 5)
    assert relative_error(k4(x), reference(x)) < 1e-6          # 4x4 kernel into 4x4: products
    k4(torch.randn(2, 3, 9, 9))                                 # into 8x8 as well
    k3(torch.randn(2, 3, 4, 4))                                 # 3x3 kernel into 4x4: products
    assert products == [("conv2d_as_product", (2, 3, 5, 5)), ("conv2d_as_product", (2, 3, 9, 9)),
                        ("conv2d_as_product", (2, 3, 4, 4))]
    k3(torch.randn(2, 3, 8, 8))                                 # into 8x8: torch's
    reflected(x)                                                # reflection padding: torch's
    assert len(products) == 3


def test_pixel_minimum_can_differ_by_kernel_size():
    net = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Conv2d(3, 3, 4), nn.Conv2d(3, 3, 3))
    assert use_winograd(net, min_output_pixels={3: 256, 4: 100}) == 3
    assert [layer.min_output_pixels for layer in net] == [256, 100, 256]


def test_runs_torch_convolution_off_float32_cpu_and_under_autocast(monkeypatch):
    conv = nn.Conv2d(3, 3, 3)
    use_winograd(conv)

    def fail(*args):
        raise AssertionError("the Winograd path must not run here")

    monkeypatch.setattr(winograd, "winograd_conv", fail)
    x = torch.randn(1, 3, 8, 8)
    conv.double()(x.double())                              # float64
    conv.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):      # autocast decides the dtype itself
        assert conv(x).dtype == torch.bfloat16
    traced = torch.jit.trace(conv, x, check_trace=False)   # exported graphs hold a plain convolution
    assert "aten::_convolution" in str(traced.graph)
    with pytest.raises(AssertionError, match="must not run"):
        conv(x)                                            # and float32 on the CPU takes the fast path


def test_weight_transform_is_reused_only_while_the_weight_is_unchanged(monkeypatch):
    transforms = []
    original = winograd.Variant.run
    monkeypatch.setattr(winograd.Variant, "run",
                        lambda self, name, *args: (transforms.append(name), original(self, name, *args))[1])
    torch.manual_seed(0)
    layer, other = nn.Conv2d(4, 4, 4), nn.Conv2d(4, 4, 4)
    use_winograd(layer), use_winograd(other)
    x = torch.randn(1, 4, 9, 9, requires_grad=True)

    def forward_matches_torch() -> torch.Tensor:
        y = layer(x)
        assert relative_error(y, F.conv2d(x, layer.weight, layer.bias)) < 1e-5
        return y

    def weight_transforms() -> int:
        return transforms.count("weight_transform")

    y1, y2 = forward_matches_torch(), forward_matches_torch()   # two passes before a step ...
    (grad_x,) = torch.autograd.grad((y1 + y2).sum(), (x,))        # ... and both input gradients
    (want_x,) = torch.autograd.grad(2 * F.conv2d(x, layer.weight, layer.bias).sum(), (x,))
    assert relative_error(grad_x, want_x) < 1e-5
    assert weight_transforms() == 1
    with torch.no_grad():   # weights swapped in place (as the EMA callback does): version counter
        torch._foreach_copy_([layer.weight.detach()], [torch.randn_like(layer.weight)])
    forward_matches_torch()
    assert weight_transforms() == 2
    layer.weight.grad = torch.randn_like(layer.weight)   # fused Adam writes without a version bump
    torch.optim.Adam([layer.weight], lr=0.1, fused=True).step()
    forward_matches_torch()
    assert weight_transforms() == 3
    other(x)                                             # another layer's transform replaces it
    forward_matches_torch()
    assert weight_transforms() == 5
    layer.double().float()                               # .data swapped (values rounded): no version bump
    layer.weight.data = layer.weight.data + 0.5          # nor here
    forward_matches_torch()
    assert weight_transforms() == 6
    with torch.inference_mode():                         # an inference tensor has no version to compare
        weight = layer.weight * 1.0
        y = winograd_conv(x.detach(), weight, layer.bias, Padding())
        assert relative_error(y, F.conv2d(x.detach(), weight, layer.bias)) < 1e-5


def test_a_weight_storage_swapped_in_at_a_freed_ones_address_is_transformed_anew():
    """The transform is kept by its weight's storage address: one freed (`.double().float()`)
    could be handed to the storage swapped in next (`.data = ...`), which then got the stale
    transform (19 of 300 tries here, before the compared storage was held)."""
    x = torch.randn(1, 4, 9, 9)
    for seed in range(300):
        torch.manual_seed(seed)
        layer = nn.Conv2d(4, 4, 4)
        use_winograd(layer)
        layer(x)
        layer.double().float()
        layer.weight.data = layer.weight.data + 0.5
        assert relative_error(layer(x), F.conv2d(x, layer.weight, layer.bias)) < 1e-5, seed


def test_settings_and_their_errors(monkeypatch, caplog):
    def net():
        return nn.Sequential(nn.Conv2d(8, 8, 3), nn.Conv2d(128, 8, 3), nn.ConvTranspose2d(4, 4, 4, 2, 1),
                             nn.Conv2d(64, 3, 7), nn.InstanceNorm2d(3))

    with pytest.raises(ValueError, match=r"model.fast_conv='fast' must be true, false or auto"):
        configure_fast_conv(net(), "fast")
    assert configure_fast_conv(net(), False) == {"winograd": 0, "gemm_conv": 0, "gemm_conv_transpose": 0,
                                                 "narrow_output": 0, "instance_norm": 0}
    # the layers no other rewrite takes get the product form (it runs on small outputs only)
    assert configure_fast_conv(net(), "auto") == {"winograd": 1, "gemm_conv": 1, "gemm_conv_transpose": 1,
                                                  "narrow_output": 1, "instance_norm": 1}
    assert configure_fast_conv(net(), True) == {"winograd": 2, "gemm_conv": 0, "gemm_conv_transpose": 1,
                                                "narrow_output": 1, "instance_norm": 1}

    def unavailable():
        raise WinogradUnavailable("no C compiler found")

    monkeypatch.setattr(fast_conv, "kernels", unavailable)
    with pytest.raises(WinogradUnavailable, match="model.fast_conv=true: no C compiler"):
        configure_fast_conv(net(), True)
    layers = net()
    with caplog.at_level(logging.WARNING):
        assert configure_fast_conv(layers, "auto") == {"winograd": 0, "gemm_conv": 2, "gemm_conv_transpose": 1,
                                                       "narrow_output": 1, "instance_norm": 1}
    assert "model.fast_conv=auto: 3x3 and 4x4 convolutions stay torch's" in caplog.text
    assert not any(type(m) is WinogradConv2d for m in layers)


def test_build_errors_name_the_compiler_and_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "false")          # a "compiler" that always fails
    with pytest.raises(WinogradUnavailable, match=r"compiling .*winograd_kernels.c with false failed.*model.fast_conv=false"):
        winograd_build._build(tmp_path / "k.so")
    assert list(tmp_path.iterdir()) == []     # no half-written library left behind
    monkeypatch.setattr(winograd_build.shutil, "which", lambda name: None)
    with pytest.raises(WinogradUnavailable, match="no C compiler found"):
        winograd_build._build(tmp_path / "k.so")


def test_kernels_build_into_the_cache_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    winograd_build.kernels.cache_clear()
    try:
        lib = winograd_build.kernels()
        assert lib.winograd_input_transform is not None
        built = list((tmp_path / "gan-i2i" / "winograd").glob("winograd_*.so"))
        assert len(built) == 1
    finally:
        winograd_build.kernels.cache_clear()


def test_a_cached_library_that_does_not_load_is_built_again(tmp_path, monkeypatch):
    """A library cut short in the cache (a machine that went down before it reached the disk)
    would otherwise be refused by every later run, which then trained without the kernels."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "first"))
    winograd_build.load_kernels()
    (library,) = (tmp_path / "first").rglob("winograd_*.so")
    cut_short = tmp_path / "second" / library.relative_to(tmp_path / "first")   # another path: dlopen loads it anew
    cut_short.parent.mkdir(parents=True)
    cut_short.write_bytes(library.read_bytes()[:100])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "second"))
    builds, build = [], winograd_build._build
    monkeypatch.setattr(winograd_build, "_build", lambda target: builds.append(target) or build(target))
    assert winograd_build.load_kernels().winograd_input_transform is not None
    assert builds == [cut_short] and cut_short.stat().st_size > 100


def test_kernels_that_cannot_be_loaded_are_unavailable_once_and_for_all(tmp_path, monkeypatch):
    """A library the loader refuses (Windows without the OpenMP DLL on its search path) is a
    WinogradUnavailable, which the models turn into torch's convolutions, not a crash; a failure
    is not retried for every model built. Without /proc/cpuinfo or os.uname (Windows) the cache
    key still comes out."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(winograd_build, "_failure", [])
    monkeypatch.setattr(winograd_build, "_build", lambda target: target.parent.mkdir(parents=True) or target.touch())
    loads = []

    def refusing_loader(path):
        loads.append(path)
        raise OSError(f"Could not find module '{path}' (or one of its dependencies)")
    monkeypatch.setattr(winograd_build.ctypes, "CDLL", refusing_loader)
    monkeypatch.delattr(winograd_build.os, "uname", raising=False)
    winograd_build.kernels.cache_clear()
    try:
        for _ in range(2):
            with pytest.raises(WinogradUnavailable, match=r"cannot be loaded \(Could not find module .*model.fast_conv=false"):
                winograd_build.kernels()
        assert len(loads) == 1
    finally:
        winograd_build.kernels.cache_clear()


def same_iteration_with_torch_layers(model, cfg, rewritten: tuple[type, ...]) -> nn.Module:
    """One seeded training iteration of `model` and of a copy whose `rewritten` layers are torch's
    again log the same losses; returns the copy (trained) for comparing updates. (Not compared
    here: a bias before instance normalisation has a gradient of ~0, and Adam's first step turns
    its rounding into a +-lr step either way.)"""
    torch_layers = copy.deepcopy(model)
    for m in torch_layers.modules():
        if type(m) in rewritten:
            m.__class__ = m.__class__.__mro__[1]   # the torch class it extends
    batch = random_batch(cfg)
    losses = []
    for m in (model, torch_layers):
        torch.manual_seed(1)
        trainer = fit_one_batch(m, batch)
        losses.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})
    rewritten_losses, torch_losses = losses
    assert rewritten_losses.keys() == torch_losses.keys() and torch_losses
    for name, value in torch_losses.items():
        assert rewritten_losses[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    return torch_layers


def test_model_setting_switches_the_residual_convolutions_and_keeps_the_iteration(train_cfg):
    cfg = train_cfg("model=cyclegan", "model.fast_conv=true")
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    # two 3x3 convolutions per residual block, two generators, and each PatchGAN's 4x4 stride-1
    # layer; layers into <= 4 channels take the narrow-output backward instead: the generators'
    # last (and first, at ngf <= 4) and the PatchGANs' last
    assert model.fast_conv_layers["winograd"] == 2 * 2 * cfg.model.generator.n_blocks + 2
    assert model.fast_conv_layers["narrow_output"] == 2 * (1 + (cfg.model.generator.ngf <= 4)) + 2
    same_iteration_with_torch_layers(model, cfg, (WinogradConv2d, ReflectionPadInNextLayer))


def test_under_a_gradient_penalty_the_critics_keep_only_rewrites_that_differentiate_twice(train_cfg):
    """WGAN-GP's penalty differentiates the critic's input gradient again; Winograd's and the
    narrow-output backward are once-differentiable (at full width the penalty crashed, or left
    the narrow last layer out of it). The critics get the product forms only; the generators all
    rewrites; the penalty's weight gradients equal torch's layers'."""
    cfg = train_cfg("model=cyclegan", "model.fast_conv=true", "loss=wgangp")
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    critic_layers = {type(m) for d in model.image_discriminators() for m in d.modules()}
    assert not critic_layers & {WinogradConv2d, NarrowOutputConv2d} and GemmConv2d in critic_layers
    assert model.fast_conv_layers["winograd"] == 2 * 2 * cfg.model.generator.n_blocks   # the generators' alone
    critic = model.D_A
    plain = copy.deepcopy(critic)
    for m in plain.modules():
        if type(m) in (GemmConv2d,):
            m.__class__ = nn.Conv2d
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    grads = []
    for net in (critic, plain):
        net.zero_grad()
        gradient, = torch.autograd.grad(net(x).sum(), x, create_graph=True)
        gradient.pow(2).sum().backward()
        # (a bias does not move the input gradient: no gradient from the penalty)
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()])
    assert any(g.abs().sum() > 0 for g in grads[0])
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(*grads))


def test_a_winograd_output_of_partial_tiles_takes_an_in_place_activation():
    """Outputs that are not a whole number of tiles (31x31 from 3x3 tiles) were a view of the
    tiles, and an in-place op on a custom Function's view output is an error: U-GAT-IT's local
    critic (LeakyReLU(inplace=True) after its stride-1 layer) crashed at 256 px."""
    conv = nn.Conv2d(8, 4, 4, padding=1)
    use_winograd(conv)
    x = torch.randn(1, 8, 32, 32, requires_grad=True)
    y = conv(x)
    assert y.shape[-2:] == (31, 31)
    F.leaky_relu_(y, 0.2).sum().backward()
    assert x.grad is not None


def test_unbatched_images_and_channels_last_weights_run_as_torchs_layers():
    torch.manual_seed(0)
    for layer in (nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(64, 2, 3, padding=1)):
        switched = copy.deepcopy(layer)
        configure_fast_conv(switched, True)
        assert type(switched) is not nn.Conv2d
        x = torch.randn(layer.in_channels, 12, 12)   # (C, H, W): torch's layers take it
        assert torch.allclose(switched(x), layer(x), atol=1e-5)
    small = nn.Conv2d(8, 4, 3, padding=1)
    product = copy.deepcopy(small)
    use_gemm_conv(product)
    product.weight.data = product.weight.data.to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 3, 3)
    assert torch.allclose(product(x), small(x), atol=1e-5)


# ----- instance norm by group norm ---------------------------------------------------------------------

@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_as_group_norm_matches_torch(affine):
    torch.manual_seed(0)
    norm = nn.InstanceNorm2d(6, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5), norm.bias.normal_()
    reference, keys = copy.deepcopy(norm), list(norm.state_dict())
    running = nn.InstanceNorm2d(6, track_running_stats=True)
    assert use_group_norm_for_instance_norm(nn.Sequential(norm, running)) == 1
    assert type(norm) is InstanceNormAsGroupNorm and type(running) is nn.InstanceNorm2d   # running stats: kept
    assert list(norm.state_dict()) == keys
    x = (torch.randn(2, 6, 9, 7) * 3 + 5).requires_grad_()   # per-map means and scales of their own
    params = list(norm.parameters())
    for mode in ("train", "eval"):
        getattr(norm, mode)(), getattr(reference, mode)()
        expected, result = reference(x), norm(x)
        assert relative_error(result, expected) < 1e-5
        grad_out = torch.randn(expected.shape)
        for got, want in zip(torch.autograd.grad(result, [x, *params], grad_out),
                             torch.autograd.grad(expected, [x, *reference.parameters()], grad_out)):
            assert relative_error(got, want) < 1e-5


def test_instance_norm_as_group_norm_runs_torch_elsewhere(monkeypatch):
    norm = nn.InstanceNorm2d(3)
    use_group_norm_for_instance_norm(norm)
    monkeypatch.setattr(F, "group_norm", lambda *args, **kwargs: pytest.fail("the group-norm path must not run here"))
    x = torch.randn(3, 5, 5)
    assert relative_error(norm(x), nn.InstanceNorm2d(3)(x)) < 1e-6   # unbatched (C, H, W)
    norm(x[None].double())                                            # float64
    with pytest.raises(ValueError, match="Expected more than 1 spatial element"):
        norm(torch.randn(2, 3, 1, 1))                                 # 1x1: torch refuses, group norm would not
    with pytest.raises(pytest.fail.Exception, match="must not run here"):
        norm(x[None])                                                 # batched float32 on the CPU: group norm


# ----- small convolutions and transposed convolutions as products -------------------------------------

def product_matches_layer(product, layer: nn.Module, x: torch.Tensor) -> None:
    """`product` on the layer's parameters gives the layer's output and gradients."""
    result, expected = product(x, layer.weight, layer.bias, layer.stride, layer.padding), layer(x)
    assert result.shape == expected.shape
    assert relative_error(result, expected) < 1e-5
    grad_out = torch.randn(expected.shape)
    inputs = [x, *layer.parameters()]
    for g, w in zip(torch.autograd.grad(result, inputs, grad_out), torch.autograd.grad(expected, inputs, grad_out)):
        assert g.shape == w.shape and relative_error(g, w) < 1e-5


@pytest.mark.parametrize("n,c_in,c_out,size,kernel,stride,padding,bias", [
    (1, 16, 8, 2, 4, 2, 1, True),    # the U-Net's transposed convolutions
    (2, 6, 5, 3, 4, 2, 1, False),    # a batch, an odd size
    (1, 4, 3, 1, 4, 2, 1, True),     # the innermost: one pixel in
    (1, 5, 7, 4, 3, 1, 0, True),     # stride 1, no padding, 3x3
    (3, 3, 2, 5, (3, 2), (2, 1), (1, 0), False),  # rectangular kernel, stride and padding
])
def test_transposed_convolution_as_a_product_matches_torch(n, c_in, c_out, size, kernel, stride, padding, bias):
    product_matches_layer(conv_transpose2d_as_product, nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding, bias=bias),
                          torch.randn(n, c_in, size, size, requires_grad=True))


@pytest.mark.parametrize("n,c_in,c_out,size,kernel,stride,padding,bias", [
    (1, 16, 8, 8, 4, 2, 1, False),   # the U-Net's innermost convolutions: 4x4 out ...
    (1, 16, 8, 2, 4, 2, 1, True),    # ... and 1x1
    (2, 6, 5, 5, 4, 2, 1, True),     # a batch, an odd size
    (3, 4, 3, 6, 3, 1, 0, False),    # stride 1, no padding, 3x3
    (1, 3, 2, 7, (3, 2), (2, 1), (1, 0), True),   # rectangular kernel, stride and padding
    (2, 8, 4, 3, 1, 1, 0, True),     # 1x1
])
def test_convolution_as_a_product_matches_torch(n, c_in, c_out, size, kernel, stride, padding, bias):
    product_matches_layer(conv2d_as_product, nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=bias),
                          torch.randn(n, c_in, size, size, requires_grad=True))


@pytest.mark.parametrize("product", [conv2d_as_product, conv_transpose2d_as_product])
def test_products_compute_only_the_gradients_asked_for_and_allow_in_place_layers_after_them(product):
    torch.manual_seed(0)
    reference = F.conv2d if product is conv2d_as_product else F.conv_transpose2d
    x = torch.randn(1, 6, 4, 4)
    weight = torch.randn(6, 6, 4, 4, requires_grad=True)
    # a frozen input (a network's first layer): the weight gradient only
    (grad_w,) = torch.autograd.grad(product(x, weight, None, (2, 2), (1, 1)).sum(), (weight,))
    (want_w,) = torch.autograd.grad(reference(x, weight, None, (2, 2), (1, 1)).sum(), (weight,))
    assert relative_error(grad_w, want_w) < 1e-5
    # a frozen weight (the idle player's) and an in-place activation on the output
    x.requires_grad_()
    frozen = weight.detach()
    (grad_x,) = torch.autograd.grad(F.leaky_relu_(product(x, frozen, None, (2, 2), (1, 1)), 0.2).sum(), (x,))
    (want_x,) = torch.autograd.grad(F.leaky_relu(reference(x, frozen, None, (2, 2), (1, 1)), 0.2).sum(), (x,))
    assert relative_error(grad_x, want_x) < 1e-5


@pytest.mark.parametrize("product", [conv2d_as_product, conv_transpose2d_as_product])
def test_products_differentiate_twice_for_gradient_penalties(product):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, generator=gen, requires_grad=True)   # 2 channels out either way
    if product is conv2d_as_product:
        weight = weight.detach().transpose(0, 1).contiguous().requires_grad_()   # (C_out, C_in, k, k)
    inputs = (x, weight, bias)
    assert torch.autograd.gradcheck(lambda *t: product(*t, (2, 2), (1, 1)), inputs)
    assert torch.autograd.gradgradcheck(lambda *t: product(*t, (2, 2), (1, 1)), inputs)


def count_product_calls(monkeypatch) -> list[tuple[str, tuple[int, ...]]]:
    """Record (product, input shape) for every call of the product forms from here on."""
    calls = []
    for name in ("conv2d_as_product", "conv_transpose2d_as_product"):
        original = getattr(gemm_conv, name)
        monkeypatch.setattr(gemm_conv, name,
                            lambda *args, f=original, n=name: calls.append((n, tuple(args[0].shape))) or f(*args))
    return calls


def test_switched_layers_use_the_products_only_on_small_float32_images(monkeypatch):
    net = nn.Sequential(nn.ConvTranspose2d(4, 4, 4, 2, 1), nn.ConvTranspose2d(4, 4, 3, 2, 1, output_padding=1),
                        nn.ConvTranspose2d(4, 4, 4, 2, 1, groups=2), nn.Conv2d(4, 4, 4, 2, 1),
                        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.Conv2d(4, 4, 3, dilation=2),
                        nn.Conv2d(4, 4, 3, padding="same"))
    # output padding, groups, dilation, reflection and "same" padding stay torch's
    assert use_gemm_conv(net) == {"gemm_conv": 1, "gemm_conv_transpose": 1}
    transposed, conv = net[0], net[3]
    assert type(transposed) is GemmConvTranspose2d and list(transposed.state_dict()) == ["weight", "bias"]
    assert type(conv) is GemmConv2d and list(conv.state_dict()) == ["weight", "bias"]
    calls = count_product_calls(monkeypatch)
    transposed(torch.randn(1, 4, 8, 8))                  # 64 pixels in: the product
    transposed(torch.randn(1, 4, 9, 8))                  # 72 pixels: oneDNN
    conv(torch.randn(2, 4, 8, 8))                        # 4x4 = 16 pixels out: the product
    conv(torch.randn(1, 4, 10, 8))                       # 5x4 = 20 pixels: oneDNN
    conv.double()(torch.randn(1, 4, 2, 2, dtype=torch.float64))   # float64: torch's
    assert calls == [("conv_transpose2d_as_product", (1, 4, 8, 8)), ("conv2d_as_product", (2, 4, 8, 8))]


@pytest.mark.parametrize("columns", [1, 3, 16, 64])
@pytest.mark.parametrize("width", [8 * skinny_products.MIN_BLOCK_WIDTH, 100])   # in blocks / one product
def test_skinny_products_equal_the_plain_products(columns, width):
    a = torch.randn(512, columns)
    w = torch.randn(512, width)
    result = skinny_products.columns_t_times_wide(a, w)
    assert result.shape == (columns, width) and relative_error(result, a.t() @ w) < 1e-6
    b = torch.randn(width, columns)
    result = skinny_products.wide_times_columns(w, b)
    assert result.shape == (512, columns) and relative_error(result, w @ b) < 1e-6


def test_unet_iteration_with_its_small_layers_as_products_keeps_losses_and_updates(train_cfg, monkeypatch):
    cfg = train_cfg("model=pix2pix")
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    # every plain convolution and transposed convolution of the U-Net and the PatchGAN is switched
    # (each runs as a product only on small images: the U-Net's innermost ones here)
    assert model.fast_conv_layers["gemm_conv"] > 0 and model.fast_conv_layers["gemm_conv_transpose"] > 0
    calls = count_product_calls(monkeypatch)
    torch_layers = same_iteration_with_torch_layers(model, cfg, (GemmConv2d, GemmConvTranspose2d))
    assert {name for name, _ in calls} == {"conv2d_as_product", "conv_transpose2d_as_product"}
    # the U-Net normalises with batch norm after bias-free convolutions: every update compares
    for (name, got), want in zip(model.named_parameters(), torch_layers.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


# ----- convolutions into a few channels ------------------------------------------------------------

@pytest.mark.parametrize("c_in,c_out,kernel,padding,size,bias", [
    (64, 3, 7, 0, 14, True),     # the generators' last layer (after a reflection pad)
    (64, 3, 7, 3, 11, False),    # zero padding as the layer's, an odd side
    (36, 2, 5, (2, 1), 9, True),
    (32, 1, 4, 1, 9, True),      # a PatchGAN's last layer: an even kernel, torch's forward
    (40, 4, (3, 5), (1, 2), 8, False),
])
def test_narrow_output_layer_matches_torch(c_in, c_out, kernel, padding, size, bias):
    layer = nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=bias)
    switched = copy.deepcopy(layer)
    assert use_narrow_output(switched) == 1 and type(switched) is NarrowOutputConv2d
    x = torch.randn(2, c_in, size, size + 1, requires_grad=True)
    expected, result = layer(x), switched(x)
    assert result.shape == expected.shape and relative_error(result, expected) < 1e-5
    if kernel in (4, (3, 5)):
        assert torch.equal(result, expected)                   # no space-to-depth form: torch's own
    with torch.no_grad():                                      # inference takes the same forward
        assert torch.equal(switched(x), result)
    grad_out = torch.randn(expected.shape)
    got = torch.autograd.grad(result, [x, *switched.parameters()], grad_out)
    want = torch.autograd.grad(expected, [x, *layer.parameters()], grad_out)
    for g, w in zip(got, want):
        assert g.shape == w.shape and relative_error(g, w) < 1e-5
    # laid out as the weight (DDP's buckets are; a PatchGAN's one channel kept a transposed stride)
    assert got[1].stride() == switched.weight.stride()
    # only the gradients asked for
    (grad_w,) = torch.autograd.grad(switched(x.detach()), [switched.weight], grad_out)
    assert relative_error(grad_w, want[1]) < 1e-5


def test_narrow_output_switches_only_wide_to_narrow_stride_1_layers():
    net = nn.Sequential(nn.Conv2d(64, 3, 7), nn.Conv2d(64, 8, 7), nn.Conv2d(16, 3, 7),
                        nn.Conv2d(64, 3, 4, stride=2), nn.Conv2d(64, 3, 3, padding=3))
    assert use_narrow_output(net) == 1
    assert [type(m) is NarrowOutputConv2d for m in net] == [True, False, False, False, False]


def test_a_run_off_the_cpu_builds_no_fast_conv_rewrites_and_no_kernels(train_cfg, monkeypatch):
    """The rewrites are CPU convolutions: `auto` on a GPU or Apple's MPS compiled the Winograd
    kernels for layers that never run them, and on a Mac, whose clang refuses OpenMP, warned of a
    failed build at every run (or opened the command-line tools' installer)."""
    from lightning_fabric.accelerators import MPSAccelerator   # (what resolved_accelerator asks)

    from src.utils.run import build_model

    def no_build():
        raise AssertionError("the Winograd kernels were built for a run off the CPU")

    cfg = train_cfg("model=cyclegan", "model.fast_conv=auto", "trainer.accelerator=auto", "data.size=64",
                    "model.generator.ngf=16")
    assert sum(build_model(cfg).fast_conv_layers.values()) > 0   # on this CPU: rewritten
    monkeypatch.setattr(winograd_build, "kernels", no_build)
    monkeypatch.setattr(fast_conv, "kernels", no_build)
    monkeypatch.setattr(MPSAccelerator, "is_available", staticmethod(lambda: True))
    assert sum(build_model(cfg).fast_conv_layers.values()) == 0
