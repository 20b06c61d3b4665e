"""U-GAT-IT and NICE-GAN networks: reference parameter counts, shapes, LIN/AdaLIN, CAM, pickling."""
import pickle
import warnings
from pathlib import Path

import hydra
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import NO_EVALUATION
from src.nets.adalin import LIN, AdaLIN, clip_rho_, map_statistics, rho_statistics
from src.nets.cam import CAMAttention, ResidualCAMAttention
from src.nets.nicegan import NICE_LIN_RHO_INIT, NICEGANDiscriminator, NICEGANGenerator
from src.nets.ugatit import UGATITDiscriminator, UGATITGenerator
from src.utils.checkpoint_loading import load_model
from src.utils.heatmap import overlay_heatmap
from src.utils.run import run_training


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_reference_parameter_counts():
    # Public code at the reference config (light, 128 px): U-GAT-IT G 10,589,888, global D
    # 53,130,176, local D 3,290,560; NICE-GAN G 8,104,640, D 46,874,433. The two generator
    # differences are explained in the class docstrings (encoder biases; one rho per channel).
    port = {"cam_classifier": "separate"}   # the port's two classifiers; the paper shares one (C weights fewer)
    assert n_params(UGATITGenerator(3, 3, ngf=64, n_res=4, img_size=128, light=True, **port)) == 10_589_888 + 2_048
    assert n_params(UGATITDiscriminator(3, ndf=64, n_layers=7, **port)) == 53_130_176
    assert n_params(UGATITDiscriminator(3, ndf=64, n_layers=5, **port)) == 3_290_560
    assert n_params(UGATITGenerator(3, 3, ngf=64, n_res=4, img_size=128, light=True)) == 10_589_888 + 2_048 - 256
    assert n_params(UGATITDiscriminator(3, ndf=64, n_layers=7)) == 53_130_176 - 2_048
    assert n_params(NICEGANGenerator(3, ngf=64, n_res=6, img_size=128, light=True)) == 8_104_640 - 3_712
    assert n_params(NICEGANDiscriminator(3, ndf=64, n_layers=7)) == 46_874_433


@pytest.mark.parametrize("light", [True, False])
def test_ugatit_generator_shapes(light):
    g = UGATITGenerator(3, 2, ngf=4, n_res=2, img_size=32, light=light)
    x = torch.randn(2, 3, 32, 32)
    out, cam_logit, heatmap = g(x)
    assert out.shape == (2, 2, 32, 32) and out.abs().max() <= 1
    assert cam_logit.shape == (2, 2) and heatmap.shape == (2, 1, 8, 8)
    assert g.encode(x).shape == (2, 16, 8, 8)


def test_full_mode_rejects_other_sizes_and_light_mode_accepts_them():
    with pytest.raises(ValueError, match="img_size"):
        UGATITGenerator(3, 3, ngf=4, n_res=1, img_size=32, light=False)(torch.randn(1, 3, 48, 48))
    out, _, _ = UGATITGenerator(3, 3, ngf=4, n_res=1, img_size=32, light=True)(torch.randn(1, 3, 48, 40))
    assert out.shape == (1, 3, 48, 40)


@pytest.mark.parametrize("n_layers,size,patches", [(5, 32, 2), (7, 128, 2)])
def test_ugatit_discriminator_shapes(n_layers, size, patches):
    d = UGATITDiscriminator(3, ndf=2, n_layers=n_layers)
    out, cam_logit, heatmap = d(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1, patches, patches) and cam_logit.shape == (2, 2)
    assert heatmap.shape == (2, 1, patches + 1, patches + 1)


def test_every_discriminator_conv_and_linear_is_spectrally_normalised():
    """(NICE-GAN's authors' code leaves its attention's fusion conv plain: attention=normalised
    takes U-GAT-IT's form)"""
    public = NICEGANDiscriminator(3, ndf=2, n_layers=6)
    normalised = NICEGANDiscriminator(3, ndf=2, n_layers=6, attention="normalised")
    for d in (UGATITDiscriminator(3, ndf=2, n_layers=5), normalised, public):
        layers = [m for m in d.modules()
                  if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not public.encoder.attention.fuse]
        assert layers and all(hasattr(m, "weight_orig") for m in layers)
    plain = UGATITDiscriminator(3, ndf=2, n_layers=5, spectral=False)
    assert not any(hasattr(m, "weight_orig") for m in plain.modules())


@pytest.mark.parametrize("light", [True, False])
def test_nicegan_discriminator_and_generator_shapes(light):
    d = NICEGANDiscriminator(3, ndf=4, n_layers=7)
    g = NICEGANGenerator(3, ngf=4, n_res=2, img_size=128, light=light)
    x = torch.randn(2, 3, 128, 128)
    local_out, global_out, cam_logit, heatmap, latent = d(x)
    assert local_out.shape == (2, 1, 14, 14) and global_out.shape == (2, 1, 2, 2)
    assert cam_logit.shape == (2, 1) and heatmap.shape == (2, 1, 32, 32) and latent.shape == (2, 8, 32, 32)
    y = g(d.encode(x))
    assert y.shape == (2, 3, 128, 128) and y.abs().max() <= 1


def test_nicegan_encoder_runs_once_for_classifier_and_generator():
    d = NICEGANDiscriminator(3, ndf=4, n_layers=6).eval()
    g = NICEGANGenerator(1, ngf=4, n_res=1)
    x = torch.randn(1, 3, 64, 64)
    latent, cam_logit, heatmap = d.encoder(x)
    local_out, global_out = d.classify(latent)
    full = d(x)
    for a, b in zip((local_out, global_out, cam_logit, heatmap, latent), full):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(d.encode(x), latent)
    assert g(latent).shape == (1, 1, 64, 64)


def test_nicegan_parameter_split_and_attention_gamma():
    d = NICEGANDiscriminator(3, ndf=4, n_layers=7)
    assert d.encoder.attention.gamma.item() == 0
    enc = {id(p) for p in d.encoder_parameters()}
    cls = {id(p) for p in d.classifier_parameters()}
    assert enc and cls and not enc & cls
    assert enc | cls == {id(p) for p in d.parameters()}
    assert any(p is d.encoder.attention.gamma for p in d.encoder_parameters())


@pytest.mark.parametrize("make,head,receptive", [
    (lambda: UGATITDiscriminator(3, ndf=2, n_layers=5), lambda d, x: d(x)[0], 70),
    (lambda: UGATITDiscriminator(3, ndf=2, n_layers=7), lambda d, x: d(x)[0], 286),
    (lambda: NICEGANDiscriminator(3, ndf=2, n_layers=7), lambda d, x: d(x)[0], 70),
    (lambda: NICEGANDiscriminator(3, ndf=2, n_layers=7), lambda d, x: d(x)[1], 286),
])
def test_discriminator_receptive_fields(make, head, receptive):
    """A centre patch logit depends on exactly a receptive-field-sized window of the input."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 352, 352, requires_grad=True)
    out = head(make(), x)
    out[0, 0, out.size(2) // 2, out.size(3) // 2].backward()
    rows = x.grad.abs().sum((0, 1)).sum(1).nonzero()
    assert rows.max() - rows.min() + 1 == receptive


def test_layer_norms_rho_initial_values():
    assert (LIN(4).rho == 0).all() and (AdaLIN(4).rho == 0.9).all()
    assert LIN(4).rho.shape == (1, 4, 1, 1)
    g = NICEGANGenerator(3, ngf=4, n_res=1)
    lin_rhos = [m.rho for m in g.modules() if isinstance(m, LIN)]
    assert lin_rhos and all(torch.allclose(r, torch.full_like(r, NICE_LIN_RHO_INIT)) for r in lin_rhos)
    assert NICE_LIN_RHO_INIT == pytest.approx(torch.softmax(torch.tensor([1.0, 3.2]), 0)[0].item())


def test_clip_rho_and_statistics():
    g = UGATITGenerator(3, 3, ngf=4, n_res=1, img_size=32)
    norm = g.adalin_blocks[0].norm1
    with torch.no_grad():
        norm.rho.copy_(torch.linspace(-1, 2, norm.rho.numel()).view_as(norm.rho))
    stats = rho_statistics(g)
    assert stats["adalin_blocks.0.norm1"] == pytest.approx((0.5, -1.0, 2.0))
    assert stats["adalin_blocks.0.norm2"] == pytest.approx((0.9, 0.9, 0.9))
    clip_rho_(g)
    assert norm.rho.min() == 0 and norm.rho.max() == 1 and norm.rho.requires_grad
    assert all(0 <= lo and hi <= 1 for _, lo, hi in rho_statistics(g).values())
    assert len(stats) == 2 + 2  # two AdaLIN in the block, two LIN in the upsampling


@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (1, 3, 1, 1), (2, 4, 1, 9)])
def test_map_statistics_match_var_mean_with_their_gradients(shape):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 3 + 5).requires_grad_()
    with torch.no_grad():
        x[0, 0] = 2.5                                  # a constant map: variance exactly 0
    expected = torch.var_mean(x, dim=(2, 3), keepdim=True, unbiased=False)
    result = map_statistics(x)
    assert result[0][0, 0].item() == 0.0
    grads = torch.randn(2, shape[0], shape[1], 1, 1)
    for got, want in zip(result, expected):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for used in ((0, 1), (0,), (1,)):                  # both outputs, or one of them, feed the loss
        got, = torch.autograd.grad(sum((result[i] * grads[i]).sum() for i in used), x, retain_graph=True)
        want, = torch.autograd.grad(sum((expected[i] * grads[i]).sum() for i in used), x, retain_graph=True)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    double = x.detach().double()                       # elsewhere: torch's var_mean itself
    assert torch.equal(map_statistics(double)[0], torch.var_mean(double, dim=(2, 3), keepdim=True, unbiased=False)[0])
    traced = torch.jit.trace(lambda t: map_statistics(t)[0], x.detach(), check_trace=False)
    assert "var_mean" in str(traced.graph)             # exported graphs hold torch's operator


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_map_statistics_of_half_precision_maps_are_taken_in_float32(dtype):
    """Under mixed precision a LIN/AdaLIN layer gets fp16 or bf16 maps: an fp16 variance of a map
    with std 300 overflows to inf (the layer would output beta alone), and a bf16 mean of maps
    around 1000 is off by ~4, more than their std of 1."""
    torch.manual_seed(0)
    wide = torch.randn(2, 3, 8, 8) * 300
    shifted = torch.randn(2, 3, 8, 8) + 1000
    for x in (wide, shifted):
        half = x.to(dtype)
        var, mean = map_statistics(half)
        assert var.dtype == mean.dtype == torch.float32
        want_var, want_mean = torch.var_mean(half.float(), dim=(2, 3), keepdim=True, unbiased=False)
        torch.testing.assert_close(var, want_var, rtol=1e-4, atol=1e-4)   # group norm's kernel, as above
        torch.testing.assert_close(mean, want_mean, rtol=1e-4, atol=1e-4)
    layer = LIN(3, rho_init=0.5)
    out = layer(wide.to(dtype))
    assert torch.isfinite(out).all() and out.float().std() < 10   # normalised, not beta alone or inf


def test_adalin_limits_are_instance_and_layer_norm():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 6, 7) * 3 + 1
    gamma, beta = torch.randn(3, 5), torch.randn(3, 5)
    g4, b4 = gamma[:, :, None, None], beta[:, :, None, None]
    norm = AdaLIN(5)
    with torch.no_grad():
        norm.rho.fill_(1.0)
    torch.testing.assert_close(norm(x, gamma, beta), g4 * F.instance_norm(x, eps=norm.eps) + b4)
    with torch.no_grad():
        norm.rho.fill_(0.0)
    torch.testing.assert_close(norm(x, gamma, beta), g4 * F.layer_norm(x, x.shape[1:], eps=norm.eps) + b4)
    lin = LIN(5)  # rho 0, gamma 1, beta 0: plain layer norm
    torch.testing.assert_close(lin(x), F.layer_norm(x, x.shape[1:], eps=lin.eps))


@pytest.mark.parametrize("classifier,n_logits", [("separate", 2), ("shared", 2), ("joint", 1)])
def test_cam_rescales_by_classifier_weights(classifier, n_logits):
    cam = CAMAttention(6, classifier=classifier)
    x = torch.randn(2, 6, 5, 5)
    out, logits, heatmap = cam(x)
    assert logits.shape == (2, n_logits)
    fcs = [m for m in cam.classifier.modules() if isinstance(m, nn.Linear)]
    w = torch.cat([fc.weight[0] for fc in fcs])
    w_gap, w_gmp = (w, w) if classifier == "shared" else (w[:6], w[6:])
    weighted = torch.cat([x * w_gap[:, None, None], x * w_gmp[:, None, None]], 1)
    torch.testing.assert_close(out, torch.relu(cam.fuse(weighted)))
    torch.testing.assert_close(heatmap, out.sum(1, keepdim=True))
    if classifier == "separate":
        torch.testing.assert_close(logits, torch.stack([x.mean((2, 3)) @ w_gap, x.amax((2, 3)) @ w_gmp], 1))


def test_residual_cam_is_identity_plus_activation_at_start():
    att = ResidualCAMAttention(6)
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(att(x)[0], F.leaky_relu(x, 0.2))


def test_networks_can_be_pickled():
    x = torch.randn(1, 3, 64, 64)
    for net in (UGATITDiscriminator(3, ndf=2, n_layers=5), NICEGANDiscriminator(3, ndf=2, n_layers=6),
                UGATITGenerator(3, 3, ngf=2, n_res=1)):
        net.eval()
        clone = pickle.loads(pickle.dumps(net))
        torch.testing.assert_close(clone(x), net(x))


def test_invalid_depths_are_rejected():
    with pytest.raises(ValueError, match="n_layers"):
        UGATITDiscriminator(3, n_layers=2)
    with pytest.raises(ValueError, match="n_layers"):
        NICEGANDiscriminator(3, n_layers=5)


def test_the_cam_heatmap_paints_each_images_strongest_attention_red_and_weakest_blue():
    """Min-max per image (a weak map still spans the colours), resized to the image, blended by
    `alpha`; a grey image is shown in RGB."""
    heat = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]], [[[10.0, 10.5], [11.0, 13.0]]]])
    black = -torch.ones(2, 3, 8, 8)
    full = overlay_heatmap(black, heat, alpha=1.0)
    assert full.shape == (2, 3, 8, 8)
    for image in full:   # bottom-right: the highest attention, top-left: the lowest
        assert torch.allclose(image[:, -1, -1], torch.tensor([1.0, -1.0, -1.0]))
        assert torch.allclose(image[:, 0, 0], torch.tensor([-1.0, -1.0, 1.0]))
    half = overlay_heatmap(black, heat, alpha=0.5)
    assert torch.allclose(half, 0.5 * black + 0.5 * full)
    grey = overlay_heatmap(torch.zeros(2, 1, 8, 8), heat, alpha=0.0)
    assert grey.shape == (2, 3, 8, 8) and torch.equal(grey, torch.zeros(2, 3, 8, 8))


def older_checkpoint_loads_with_its_settings(train_cfg, tmp_path, model_name: str, written_with: list[str],
                                            dropped: dict[str, str], refused: str):
    """A `model_name` checkpoint written with the `written_with` overrides, stripped of the
    settings `dropped` ({network: setting}) as a file from before they existed: loaded, its
    networks are whole (the upgrade gives the settings back); resumed, a run that builds
    today's defaults is refused with a message matching `refused`. Returns the loaded model."""
    cfg = train_cfg(f"model={model_name}", "data=shapes", "max_iters=1", *NO_EVALUATION, *written_with)
    run_training(cfg)
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    for net, setting in dropped.items():
        del checkpoint["hyper_parameters"][net][setting]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    model = load_model(old, use_ema=False)
    for name, value in checkpoint["state_dict"].items():
        assert torch.equal(model.state_dict()[name], value), name
    # A resume builds the networks of this run's settings: refused, naming the settings that fit
    resumed = train_cfg(f"model={model_name}", "data=shapes", "max_iters=2", *NO_EVALUATION, f"ckpt_path={old}")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    with pytest.raises(ValueError, match=refused), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        run_training(resumed)
    # (refused before the warning that the run goes on with this run's settings)
    assert not [w for w in warned if "the run goes on" in str(w.message)]
    return model


def test_a_ugatit_checkpoint_from_before_the_cam_classifier_setting_loads_with_its_two_classifiers(
        train_cfg, tmp_path):
    """U-GAT-IT had the PyTorch port's two CAM classifiers before `cam_classifier` existed; its
    default is now the paper's shared one, so an older checkpoint's networks did not fit."""
    networks = ("generator", "global_discriminator", "local_discriminator")
    model = older_checkpoint_loads_with_its_settings(
        train_cfg, tmp_path, "ugatit", [f"model.{net}.cam_classifier=separate" for net in networks],
        dict.fromkeys(networks, "cam_classifier"),
        "two classifiers.*model.generator.cam_classifier=separate model.global_discriminator.cam_classifier=separate")
    assert model.hparams.generator["cam_classifier"] == "separate"


def test_an_older_checkpoints_upgrades_leave_a_newer_model_that_shares_a_name_alone():
    """The upgrades of older files key on names other models may share: a new noise model with
    `latent_dim` but no `test_time_batch_stats`, or a new translator on U-GAT-IT's networks with
    the shared classifier, would have been given settings they do not take, and eval.py and
    translate.py refused their checkpoints as altered."""
    from src.models.checkpoint_fit import upgraded_hparams
    from src.models.noise_gan import NoiseGAN

    class NewNoiseTranslator:   # a class of a researcher's own
        def __init__(self, latent_dim: int, generator: dict):
            pass

    hparams = {"latent_dim": 8, "generator": {"_target_": "src.nets.ugatit.UGATITGenerator", "ngf": 4}}
    shared_classifier = {"state_dict": {"G_A.cam.classifier.fc.weight": torch.zeros(1)}}
    assert upgraded_hparams(hparams, shared_classifier, NewNoiseTranslator) == hparams
    assert upgraded_hparams(hparams, shared_classifier, NoiseGAN)["generator"] == hparams["generator"]
    # an older file: a class that takes the settings, weights of the port's two classifiers
    two_classifiers = {"state_dict": {"G_A.cam.classifier.gap_fc.weight": torch.zeros(1)}}
    old = upgraded_hparams(hparams, two_classifiers, NoiseGAN)
    assert old["test_time_batch_stats"] is False and old["reference_batch_size"] == 64
    assert old["generator"] == {**hparams["generator"], "cam_classifier": "separate"}


def test_nicegan_without_spectral_norm_has_none_anywhere_in_its_discriminators_and_trains(train_cfg):
    """model.discriminator.spectral=false reaches the encoder, the CAM attention and both heads."""
    from conftest import fit_one_batch, random_batch
    from src.nets.spectral_norm import has_spectral_norm
    cfg = train_cfg("model=nicegan", "model.discriminator.spectral=false")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    assert not any(has_spectral_norm(module) for D in (model.D_A, model.D_B) for module in D.modules())
    spectral = hydra.utils.instantiate(train_cfg("model=nicegan").model, _recursive_=False)
    assert any(has_spectral_norm(module) for module in spectral.D_A.encoder.attention.modules())
    before = [p.detach().clone() for p in model.D_A.parameters()]
    fit_one_batch(model, random_batch(cfg))
    assert any(not torch.equal(b, p) for b, p in zip(before, model.D_A.parameters()))


def test_nicegans_attention_is_the_authors_codes_a_plain_fusion_conv_and_the_raw_classifier_weight():
    """alpc91's NICE-GAN leaves the attention's 1x1 fusion conv without spectral norm and
    rescales the feature map by `list(fc.parameters())[0]`, the unnormalised weight_orig: the
    branch that gamma lets in is 1/sigma larger there than with both normalised."""
    from src.nets.spectral_norm import has_spectral_norm
    torch.manual_seed(0)
    public, normalised = (NICEGANDiscriminator(3, ndf=2, n_layers=6, attention=form)
                          for form in ("public_code", "normalised"))
    assert not has_spectral_norm(public.encoder.attention.fuse)
    assert has_spectral_norm(normalised.encoder.attention.fuse)
    att = public.encoder.attention
    with torch.no_grad():
        att.gamma.fill_(0.5)
    x = torch.randn(2, att.fuse.in_channels // 2, 5, 5)
    out, logits, _ = att(x)
    raw = att.classifier.fc.weight_orig[0]   # (the call above ran the power iteration)
    w_gap, w_gmp = raw.split(x.shape[1])
    weighted = torch.cat([x * w_gap[None, :, None, None], x * w_gmp[None, :, None, None]], 1)
    torch.testing.assert_close(out, F.leaky_relu(0.5 * att.fuse(weighted) + x, 0.2))
    normalised_weight = att.classifier.fc.weight[0]
    torch.testing.assert_close(logits[:, 0], torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1) @ normalised_weight)
    assert not torch.allclose(raw, normalised_weight)
    with pytest.raises(ValueError, match="model.discriminator.attention='plain' must be one of public_code, normalised"):
        NICEGANDiscriminator(3, ndf=2, n_layers=6, attention="plain")


def test_a_nicegan_checkpoint_from_before_the_attention_setting_loads_with_its_normalised_attention(
        train_cfg, tmp_path):
    model = older_checkpoint_loads_with_its_settings(
        train_cfg, tmp_path, "nicegan", ["model.discriminator.attention=normalised"], {"discriminator": "attention"},
        "attention fusion conv is spectrally normalised.*model.discriminator.attention=normalised")
    assert model.hparams.discriminator["attention"] == "normalised"
