"""Nets, losses, image pool and LR schedules on known inputs."""
import hydra
import pytest
import torch

from src.losses import AdversarialLoss, feature_matching_loss, gradient_penalty
from src.models.image_pool import ImagePool
from src.models.lr_schedules import CosineDecay, LinearDecay, StepDecay, build_scheduler, decay_end_mismatch
from src.nets.discriminators import MultiscaleDiscriminator, NLayerDiscriminator
from src.nets.generators import ResnetGenerator, UnetGenerator
from src.nets.init import init_weights


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_paper_networks_match_reference_parameter_counts():
    # Counts of the junyanz reference implementation at its defaults.
    assert n_params(ResnetGenerator(n_blocks=9)) == 11_378_179
    assert n_params(UnetGenerator(num_downs=8)) == 54_413_955
    assert n_params(NLayerDiscriminator(n_layers=3)) == 2_764_737


@pytest.mark.parametrize("size,num_downs", [(32, 5), (128, 7)])
def test_unet_shapes_and_skip_ablation(size, num_downs):
    """Without skips the decoder's layers take only the level below (half the input channels)."""
    x = torch.randn(2, 3, size, size)
    counts = {}
    for use_skip in (True, False):
        g = UnetGenerator(3, 1, num_downs=num_downs, ngf=4, use_skip=use_skip)
        y = g(x)
        assert y.shape == (2, 1, size, size) and y.abs().max() <= 1
        counts[use_skip] = n_params(g)
    assert counts[False] < counts[True]
    up = [m for m in UnetGenerator(3, 1, num_downs=num_downs, ngf=4, use_skip=False).modules()
          if isinstance(m, torch.nn.ConvTranspose2d)]
    up_skip = [m for m in UnetGenerator(3, 1, num_downs=num_downs, ngf=4, use_skip=True).modules()
               if isinstance(m, torch.nn.ConvTranspose2d)]
    # the innermost up layer has no skip to take in either; every other one takes half without
    assert [m.in_channels * 2 for m in up[1:]] == [m.in_channels for m in up_skip[1:]]


def test_resnet_generator_shapes_and_encoder_split():
    g = ResnetGenerator(1, 3, ngf=4, n_blocks=2)
    x = torch.randn(1, 1, 36, 44)
    assert g(x).shape == (1, 3, 36, 44)
    assert g.encoder(x).shape == (1, 16, 9, 11)


@pytest.mark.parametrize("n_layers,receptive", [(0, 1), (1, 16), (3, 70)])
def test_patchgan_receptive_field(n_layers, receptive):
    """Perturbing one pixel changes only the patch logits whose receptive field covers it."""
    d = NLayerDiscriminator(3, ndf=4, n_layers=n_layers, norm="none")
    x = torch.zeros(1, 3, 96, 96, requires_grad=True)
    out = d(x)
    out[0, 0, out.size(2) // 2, out.size(3) // 2].backward()
    rows = x.grad.abs().sum((0, 1)).sum(1).nonzero()
    assert rows.max() - rows.min() + 1 == receptive


def test_multiscale_discriminator_and_feature_matching():
    d = MultiscaleDiscriminator(num_scales=3, input_nc=3, ndf=4, n_layers=2)
    x = torch.randn(1, 3, 64, 64)
    logits, feats = d(x, return_features=True)
    assert len(logits) == 3 and len(feats) == 3 and logits[1].shape[-1] < logits[0].shape[-1]
    assert feature_matching_loss(feats, feats).item() == 0
    _, other = d(x + 1, return_features=True)
    assert feature_matching_loss(other, feats).item() > 0


def test_multiscale_terms_weigh_as_in_pix2pixhd():
    """pix2pixHD sums the adversarial terms of its discriminators, and its feature matching
    weighs each of a scale's layers 4 / (number of layers) and averages the scales."""
    real = [[torch.zeros(1, 2, 4, 4) for _ in range(4)], [torch.zeros(1, 2, 2, 2) for _ in range(2)]]
    fake = [[t + 1 for t in real[0]], [t + 2 for t in real[1]]]
    # scale 0: four layers at L1 1, weight 4/4 -> 4; scale 1: two layers at L1 2, weight 4/2 -> 8
    assert feature_matching_loss(fake, real).item() == pytest.approx((4 + 8) / 2)
    assert feature_matching_loss(fake[0], real[0]).item() == pytest.approx(4)   # a single PatchGAN
    lsgan = AdversarialLoss("lsgan")
    logits = [torch.full((1, 1, 4, 4), 0.5), torch.full((1, 1, 2, 2), 0.0)]
    assert lsgan(logits, True).item() == pytest.approx(0.25 + 1.0)


def test_adversarial_losses_on_known_logits():
    ones, zeros = torch.ones(4), torch.zeros(4)
    ls = AdversarialLoss("lsgan")
    assert ls(ones, True).item() == 0 and ls(zeros, True).item() == 1 and ls(ones, False).item() == 1
    van = AdversarialLoss("vanilla")
    assert van(zeros, True).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    hinge = AdversarialLoss("hinge")
    assert hinge(ones * 2, True).item() == 0 and hinge(ones * 2, False).item() == 3
    assert hinge(ones * 2, True, for_discriminator=False).item() == -2
    wgan = AdversarialLoss("wgangp")
    assert wgan(ones * 3, True).item() == -3 and wgan(ones * 3, False).item() == 3
    clipped = AdversarialLoss("wgan")   # the same scores; it clips instead of penalising
    assert clipped(ones * 3, True).item() == -3 and not clipped.needs_gradient_penalty
    assert ls([ones, zeros], True).item() == 1.0  # a multi-scale discriminator's list is summed
    with pytest.raises(ValueError, match="loss.gan_mode"):
        AdversarialLoss("bogus")


def test_gradient_penalty_is_zero_for_a_unit_slope_critic():
    w = torch.zeros(1, 3, 4, 4)
    w[0, 0, 0, 0] = 1.0  # critic(x) = x[0, 0, 0]: gradient norm exactly 1
    critic = lambda x: (x * w).sum((1, 2, 3))  # noqa: E731
    real, fake = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(0.0, abs=1e-12)
    assert gradient_penalty(lambda x: 2 * critic(x), real, fake).item() == pytest.approx(1.0)


def test_gradient_penalty_mixes_each_sample_with_its_own_weight():
    """WGAN-GP draws one interpolation weight per sample (Gulrajani et al., Algorithm 1): the
    critic sees real 1 and fake 0 mixed to one value per sample, different between samples."""
    seen = []

    def critic(x):
        seen.append(x.detach())
        return x.sum((1, 2, 3))
    gradient_penalty(critic, torch.ones(8, 3, 4, 4), torch.zeros(8, 3, 4, 4))
    mixed = seen[0].flatten(1)
    assert torch.equal(mixed, mixed[:, :1].expand_as(mixed))   # one weight within a sample
    assert len(set(mixed[:, 0].tolist())) == 8                 # its own per sample


def test_image_pool_fills_then_mixes_and_round_trips():
    torch.manual_seed(0)
    pool = ImagePool(3)
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: returns what it stores
    mixed = torch.cat([pool.query(torch.full((1, 1, 1, 1), 10.0 + i)) for i in range(50)])
    assert (mixed < 10).any() and (mixed >= 10).any()  # some old fakes come back, some new pass
    # A stored fake handed back leaves its place to the new one: what the pool returned since
    # it filled, and what it holds, are every fake it was given, each once.
    held_and_returned = torch.cat([mixed, *pool.images]).flatten().sort().values
    assert held_and_returned.tolist() == [0.0, 1.0, 2.0] + [10.0 + i for i in range(50)]
    restored = ImagePool(3)
    restored.load_state_dict(pool.state_dict())
    torch.manual_seed(1)
    a = pool.query(torch.full((4, 1, 1, 1), 99.0))
    torch.manual_seed(1)
    assert torch.equal(a, restored.query(torch.full((4, 1, 1, 1), 99.0)))
    assert torch.equal(ImagePool(0).query(first), first)


def test_a_resume_with_another_pool_size_keeps_the_configured_one(caplog):
    """model.pool_size=0 (or smaller) on resume is obeyed, not replaced by the checkpoint's size."""
    saved = ImagePool(3)
    saved.query(torch.arange(3.0).view(3, 1, 1, 1))
    smaller, off = ImagePool(2), ImagePool(0)
    with caplog.at_level("WARNING"):
        smaller.load_state_dict(saved.state_dict())
        off.load_state_dict(saved.state_dict())
    assert smaller.size == 2 and [float(i) for i in smaller.images] == [0.0, 1.0]
    fresh = torch.full((2, 1, 1, 1), 7.0)
    assert off.size == 0 and not off.images and torch.equal(off.query(fresh), fresh)
    assert "model.pool_size=0, but the checkpoint's image pool held up to 3 images" in caplog.text


def test_the_image_pool_keeps_float32_fakes_made_in_half_precision():
    pool = ImagePool(2)
    for dtype in (torch.bfloat16, torch.float16, torch.bfloat16):
        assert pool.query(torch.ones(1, 1, 1, 1, dtype=dtype)).dtype == torch.float32
    assert [image.dtype for image in pool.state_dict()["images"]] == [torch.float32] * 2
    # A pool saved in bf16 (before the pools kept float32), resumed in float32: the batch of one
    # it hands back may be a stored image, which a float32 discriminator would refuse
    restored = ImagePool(2)
    restored.load_state_dict({"size": 2, "images": [torch.ones(1, 1, 1, 1, dtype=torch.bfloat16)] * 2})
    torch.manual_seed(0)
    handed = [restored.query(torch.zeros(1, 1, 1, 1)) for _ in range(8)]
    assert all(image.dtype == torch.float32 for image in handed) and any(image.item() == 1 for image in handed)


def test_linear_decay_schedule_matches_the_paper_recipe():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    sched = build_scheduler(opt, policy="linear", unit="epoch", constant=100, decay=100)
    lrs = []
    for _ in range(201):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # Epochs 1-100 (lrs[0..99]) at the initial rate, 101-200 from 100/101 down to 1/101 of it,
    # as CycleGAN's code (lambda_rule: 1 - max(0, epoch + 1 - 100) / 101); 0 once the run is over.
    assert lrs[0] == lrs[99] == 2e-4
    assert lrs[100] == pytest.approx(2e-4 * 100 / 101) and lrs[199] == pytest.approx(2e-4 / 101) and lrs[200] == 0
    cosine = CosineDecay(constant=100, decay=100)
    assert cosine(99) == 1.0 and 0.999 < cosine(100) < 1.0 and cosine(149) > 0.5 > cosine(150) and cosine(200) == 0
    with pytest.raises(ValueError, match="lr_schedule.policy"):
        build_scheduler(opt, policy="exp")


def test_step_decay_multiplies_the_rate_by_gamma_every_step_size():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, policy="step", step_size=50, gamma=0.1)
    lrs = []
    for _ in range(101):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == lrs[49] == 1.0 and lrs[50] == lrs[99] == pytest.approx(0.1) and lrs[100] == pytest.approx(0.01)


def test_a_decay_that_misses_the_runs_end_is_named():
    paper = LinearDecay(constant=100, decay=100)
    assert decay_end_mismatch(paper, "epoch", 200) is None
    assert "run is 150 epochs long: it stops with the rate at 0.50 of its start" in decay_end_mismatch(paper, "epoch", 150)
    assert "its last 50 epochs train at a rate of 0" in decay_end_mismatch(paper, "epoch", 250)
    assert "Set ++model.lr_schedule.constant=... ++model.lr_schedule.decay=... to fit the run" in \
        decay_end_mismatch(paper, "epoch", 250)
    extended = decay_end_mismatch(paper, "epoch", 250, resumed=True)   # whose settings change nothing of it
    assert "keeps the schedule of the run it continues" in extended and "init_from=" in extended
    assert "Set model.lr_schedule" not in extended
    assert "rate at 0.49" in decay_end_mismatch(CosineDecay(100, 100), "epoch", 150)
    assert decay_end_mismatch(StepDecay(50, 0.1), "epoch", 150) is None


def test_a_half_waiting_for_the_run_length_starts_at_full_rate_and_refuses_to_step_unfilled():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(opt, policy="linear", unit="iteration", constant=None, decay=None)
    factor = scheduler.lr_lambdas[0]
    assert factor.waits_for_the_run_length and opt.param_groups[0]["lr"] == 1.0
    with pytest.raises(RuntimeError, match="'half' was not filled in"):
        factor(1)
    factor.fill_in_halves(7)
    assert (factor.constant, factor.decay) == (3, 4) and factor(7) == 0.0
    given_decay = CosineDecay(constant=None, decay=10)
    given_decay.fill_in_halves(8)
    assert (given_decay.constant, given_decay.decay) == (4, 10)   # only the missing half is filled in


def test_unet_depth_auto_reaches_one_pixel_at_the_crop_size():
    assert [UnetGenerator(num_downs="auto", image_size=s, ngf=2).size_multiple for s in (32, 128, 256)] == [32, 128, 256]
    # Not a power of two: as deep as its side halves evenly (768 by 512's depth 9 would not fit)
    for size, multiple in ((768, 256), (384, 128), (96, 32)):
        unet = UnetGenerator(num_downs="auto", image_size=size, ngf=2)
        assert unet.size_multiple == multiple
    with pytest.raises(ValueError, match=r"num_downs=auto needs model.generator.image_size .* at least 32 px, got 16"):
        UnetGenerator(num_downs="auto", image_size=16)


def test_resnet_blocks_auto_follow_the_paper_by_image_size():
    blocks = [len([m for m in ResnetGenerator(ngf=2, n_blocks="auto", image_size=s).encoder
                   if type(m).__name__ == "ResnetBlock"]) for s in (128, 256, 512)]
    assert blocks == [6, 9, 9]
    with pytest.raises(ValueError, match="n_blocks=auto needs model.generator.image_size"):
        ResnetGenerator(n_blocks="auto")


def test_lsgan_codes_set_what_the_generator_wants_the_discriminator_to_say():
    """Mao et al.'s (a, b, c) = (-1, 1, 0): fakes at -1 and reals at 1 cost D nothing, and the
    generator is done when D says 0 (with c defaulting to b, it would want 1)."""
    codes = AdversarialLoss("lsgan", real_label=1.0, fake_label=-1.0, generator_label=0.0)
    zeros = torch.zeros(4)
    assert codes(zeros - 1, False).item() == 0 and codes(zeros + 1, True).item() == 0
    assert codes(zeros, True, for_discriminator=False).item() == 0
    assert AdversarialLoss("lsgan", fake_label=-1.0)(zeros, True, for_discriminator=False).item() == 1
    with pytest.raises(ValueError, match="always targets 'real'"):
        codes(zeros, False, for_discriminator=False)


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 4))


def test_tflib_init_draws_the_wgan_gp_codes_uniform_ranges():
    """tflib: uniform, std sqrt(4 / (fan_in + fan_out)) for convs, the stride's area dividing a
    conv's fan_out and a transposed conv's fan_in; Glorot's sqrt(2 / (in + out)) for linear."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(64, 128, 5, stride=2), torch.nn.ConvTranspose2d(128, 64, 5, stride=2),
                              torch.nn.Linear(4096, 1), torch.nn.BatchNorm2d(8))
    init_weights(net, "tflib")
    stds = {"0.weight": (4 / (64 * 25 + 128 * 25 / 4)) ** 0.5, "1.weight": (4 / (128 * 25 / 4 + 64 * 25)) ** 0.5,
            "2.weight": (2 / 4097) ** 0.5}
    for key, std in stds.items():
        weight = net.state_dict()[key]
        assert weight.abs().max() <= std * 3 ** 0.5 and weight.abs().max() > 0.99 * std * 3 ** 0.5, key
        assert abs(weight.std().item() / std - 1) < 0.05, key
    assert torch.equal(net[3].weight, torch.ones(8)) and not net[0].bias.any()


def test_wgan_gp_takes_its_codes_init(train_cfg):
    model = hydra.utils.instantiate(train_cfg("model=wgangp").model, _recursive_=False)
    conv = next(m for m in model.discriminator.modules() if isinstance(m, torch.nn.Conv2d))
    fan_in, fan_out = conv.in_channels * 16, conv.out_channels * 16 / 4   # 4x4 kernels, stride 2
    bound = (4 / (fan_in + fan_out)) ** 0.5 * 3 ** 0.5
    assert model.init_cfg["type"] == "tflib" and 0.99 * bound < conv.weight.abs().max() <= bound


def test_pytorch_init_keeps_the_layers_own_weights_and_the_others_draw_anew():
    """`pytorch`: NICE-GAN's public code never calls an init; `normal`: N(0, gain) weights, zero
    biases, batch-norm scales N(1, gain)."""
    constructed = small_net().state_dict()
    kept = init_weights(small_net(), "pytorch").state_dict()
    assert all(torch.equal(kept[k], v) for k, v in constructed.items())
    drawn = init_weights(small_net(), "normal", 0.02).state_dict()
    assert not torch.equal(drawn["0.weight"], constructed["0.weight"]) and drawn["0.weight"].abs().max() < 0.1
    assert not drawn["0.bias"].any() and (drawn["1.weight"] - 1).abs().max() < 0.1
    with pytest.raises(ValueError, match=r"Unknown init 'he' \(config key model.init.type\)"):
        init_weights(small_net(), "he")


def test_one_dimensional_batch_norm_scales_are_drawn_too():
    """InfoGAN's fully connected layers and the MLP generator use BatchNorm1d."""
    torch.manual_seed(0)
    net = init_weights(torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.BatchNorm1d(64)), "normal", 0.02)
    assert not torch.equal(net[1].weight, torch.ones(64)) and (net[1].weight - 1).abs().max() < 0.1
    # xavier's gain multiplies the weights (1.0 for the GAN's FC layers): no N(1, 1) scales
    net = init_weights(torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.BatchNorm1d(64)), "xavier", 1.0)
    assert torch.equal(net[1].weight, torch.ones(64))


def test_the_output_tanh_is_torchs_tanh_through_a_sigmoid_on_the_cpu():
    """torch's CPU tanh (MKL's vector math) can round the same input differently from one call
    to the next on two threads, and seeded runs drifted from their repetitions and resumes; the
    generators' outputs go through torch's sigmoid there (src/nets/tanh.py)."""
    from src.nets.generators import ResnetGenerator, UnetGenerator
    from src.nets.tanh import Tanh, tanh

    x = torch.linspace(-12, 12, 4001, dtype=torch.float32, requires_grad=True)
    y = tanh(x)
    assert torch.equal(y, 2 * torch.sigmoid(2 * x) - 1)
    assert (y.double() - torch.tanh(x.double())).abs().max() < 2.5e-7 and y.min() == -1 and y.max() == 1
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert (grad.double() - (1 - torch.tanh(x.detach().double()) ** 2)).abs().max() < 5e-7
    assert torch.equal(tanh(x.detach().double()), torch.tanh(x.detach().double()))   # elsewhere torch's own
    for net in (ResnetGenerator(3, 3, ngf=4, n_blocks=1), UnetGenerator(3, 3, num_downs=5, ngf=4)):
        assert [type(m) for m in net.modules() if isinstance(m, torch.nn.Tanh)] == [Tanh]


def test_a_networks_refusal_names_the_config_node_it_sits_under(train_cfg):
    """U-GAT-IT's global and local discriminators share one class, whose error named a
    model.discriminator key the model does not have: the node goes in front now."""
    from hydra.errors import InstantiationException
    cfg = train_cfg("model=ugatit", "model.local_discriminator.n_layers=2")
    with pytest.raises(InstantiationException, match=r"model.local_discriminator \(UGATITDiscriminator\): "
                                                     r"n_layers=2 must be >= 3"):
        hydra.utils.instantiate(cfg.model, _recursive_=False)


def test_a_removed_loss_weight_is_named_with_the_fix(train_cfg):
    from hydra.errors import InstantiationException
    cfg = train_cfg("~loss.weights.identity")
    with pytest.raises(InstantiationException, match=r"loss.weights.identity is missing, and CycleGAN needs it: add "
                                                     r"\+loss.weights.identity=<weight> \(0 turns the term off\)"):
        hydra.utils.instantiate(cfg.model, _recursive_=False)


@pytest.mark.parametrize("target, settings, message", [
    ("src.callbacks.ema.GeneratorEMA", {"start_iter": True}, r"callbacks.ema.start_iter=True must be an integer >= 0"),
    ("src.callbacks.shapes_truth.ShapesTruthCallback", {"max_pairs": True},
     r"callbacks.shapes_truth.max_pairs=True must be a positive integer or null"),
    ("src.nets.stylegan.StyleGANGenerator", {"latent_dim": 8, "image_size": 8, "truncation_cutoff": True},
     r"model.generator.truncation_cutoff=True must be a positive number"),
])
def test_yaml_true_is_not_taken_for_a_count_of_1(target, settings, message):
    """YAML's `true` is an int to Python: these counts took it as 1."""
    with pytest.raises(ValueError, match=message):
        hydra.utils.get_class(target)(**settings)
