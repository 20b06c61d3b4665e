"""The models' training steps compute what the public reference code computes.

For each model, one training iteration runs through Lightning (the real `training_step`), and a
deep copy of the same model (same weights, same spectral-norm vectors) runs one iteration written
out the way the public code writes it: its order of passes, its own Adam optimizers over its
own parameter groups, and its waste kept (U-GAT-IT re-runs the generators without detach in the
discriminator step; NICE-GAN's generator step runs the full discriminators on the reals and
back-propagates into the encoders; nobody freezes the idle player). The logged losses must equal
the reference's, and every parameter must have moved the same way: the models' shortcuts
(detached fakes, frozen players, fewer passes) change the cost, not the result.

Randomness: the inputs are seeded random tensors; pix2pix's dropout masks match because the
RNG is re-seeded right before both iterations and both draw them in the same order (G runs
first); the image pool is still filling in the first iteration, so it returns its input.
"""
import copy
import itertools

import hydra
import pytest
import torch

from conftest import fit_one_batch, random_batch
from src.models.optimizers import adam_kernel
from src.nets.spectral_norm import _power_iteration
from src.utils.reference_iterations import CycleGANReference, NICEGANReference, Pix2PixReference, UGATITReference

SEED = 1234
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)


# ----- shared machinery ------------------------------------------------------------------------

def build(train_cfg, model_name: str, *overrides: str):
    cfg = train_cfg(f"model={model_name}", *overrides)
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    return cfg, model, copy.deepcopy(model)


def train_one_iteration(model, batch: dict) -> dict[str, float]:
    """One batch through a real Trainer; returns the logged losses (`train/<name>` -> value)."""
    original = model.train_iteration

    def seeded_iteration(b):
        torch.manual_seed(SEED)  # the reference re-seeds at the same point
        original(b)

    model.train_iteration = seeded_iteration
    trainer = fit_one_batch(model, batch)
    return {k.removeprefix("train/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}


def adam(cfg, *modules):
    """The reference's optimizer, as the model's config sets it: Adam with the same kernel as the
    model's (fused where torch has one), or plain SGD
    (`test_steps_move_every_parameter_by_the_reference_gradient`).

    Biases in front of an instance norm get an exactly-zero true gradient, so what they receive
    is rounding noise, which Adam scales up to steps of +-lr: a one-ulp difference anywhere
    earlier (two Adam kernels rounding differently) flips such steps. So the reference shares
    the kernel, and `test_fused_adam_makes_the_default_adam_update` checks the kernel itself
    (and `noise_gradient_parameters` are left out of the comparison).
    """
    o = cfg.model.optimizer
    params = list(itertools.chain(*(m.parameters() for m in modules)))
    if o.type == "sgd":
        return torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **adam_kernel(params))


def noise_gradient_parameters(model: torch.nn.Module) -> set[str]:
    """The biases right before an instance norm without affine terms (CycleGAN's and U-GAT-IT's
    residual blocks): the norm takes each channel's mean away, so their true gradient is exactly
    zero and what they get is rounding noise, whose sign (all that Adam's first step keeps) and size
    turn on the order in which a gradient's parts were added up (a step back-propagated in parts)."""
    params, names = dict(model.named_parameters()), set()
    for prefix, module in model.named_modules():
        children = list(module.named_children())
        for (name, _), (_, following) in zip(children, children[1:]):
            bias = f"{prefix}.{name}.bias" if prefix else f"{name}.bias"
            if isinstance(following, torch.nn.InstanceNorm2d) and not following.affine and bias in params:
                names.add(bias)
    return names


def assert_losses_match(logged: dict[str, float], reference: dict[str, torch.Tensor]) -> None:
    for name, value in reference.items():
        assert name in logged, f"the model did not log '{name}' (logged: {sorted(logged)})"
        torch.testing.assert_close(torch.tensor(logged[name]), value.detach().float(), **LOSS_TOL,
                                   msg=lambda m, name=name: f"loss '{name}': {m}")


def assert_same_updates(model, reference, before: dict[str, torch.Tensor], buffers: bool = True,
                        atol: float = 1e-8) -> None:
    """Every parameter but the `noise_gradient_parameters` moved by the same amount (and buffers,
    e.g. spectral-norm u/v, agree)."""
    ref_params = dict(reference.named_parameters())
    noise = noise_gradient_parameters(model)
    moved = 0
    for name, p in model.named_parameters():
        if name in noise:
            continue
        delta, ref_delta = p.detach() - before[name], ref_params[name].detach() - before[name]
        # An Adam step moves each weight by about lr, whatever its gradient's size: compare steps.
        # The absolute tolerance is also a share of the tensor's largest update: an element whose
        # gradient sums cancelling contributions keeps only their rounding, which the order of
        # the sums sets (parts back-propagated apart, or another CPU's kernels: AVX-512 hosts
        # moved such elements by 2e-3 of their own size). A doubled or missing term moves the
        # large elements by a whole share of themselves.
        tolerance = max(atol, 1e-3 * float(ref_delta.abs().max()))
        torch.testing.assert_close(delta, ref_delta, rtol=1e-3, atol=tolerance,
                                   msg=lambda m, name=name: f"update of '{name}': {m}")
        moved += int(delta.abs().sum() > 0)
    assert moved > 0
    if buffers:
        ref_buffers = dict(reference.named_buffers())
        for name, b in model.named_buffers():
            torch.testing.assert_close(b, ref_buffers[name], rtol=1e-5, atol=1e-7,
                                       msg=lambda m, name=name: f"buffer '{name}': {m}")


def parameters_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ----- CycleGAN (junyanz/pytorch-CycleGAN-and-pix2pix, cycle_gan_model.py) -----------------------

def cyclegan_reference_iteration(m, cfg, batch) -> dict[str, torch.Tensor]:
    """cycle_gan_model.py, as src/utils/reference_iterations.py writes it out (the benchmark's
    `ab=reference` runs the same code); the pool is filling, so it hands back the new fakes."""
    return CycleGANReference(m, optimizer=lambda *nets: adam(cfg, *nets))(batch)


@pytest.mark.parametrize("fast_conv", (False, True))
def test_cyclegan_matches_the_reference_iteration(train_cfg, fast_conv):
    """With the rewritten convolutions (model.fast_conv=true) too: in both copies, so the step's logic is what is compared."""
    cfg, model, reference = build(train_cfg, "cyclegan", f"model.fast_conv={str(fast_conv).lower()}")
    batch, before = random_batch(cfg), parameters_of(model)
    logged = train_one_iteration(model, batch)
    torch.manual_seed(SEED)
    expected = cyclegan_reference_iteration(reference, cfg, batch)
    assert_losses_match(logged, expected)
    assert_same_updates(model, reference, before)


def test_cyclegan_matches_the_reference_iteration_with_full_image_pools(train_cfg):
    """Past its first pool_size fakes the pool hands the discriminators stored ones: here full
    from the start (four stored fakes each), so a step that bypassed it would differ."""
    cfg, model, _ = build(train_cfg, "cyclegan", "model.pool_size=4", "data.batch_size=4")
    batch = random_batch(cfg)
    stored = {name: torch.rand_like(batch["A"]) * 2 - 1 for name in model.pools}
    for name, pool in model.pools.items():
        pool.images = [image[None].clone() for image in stored[name]]
    reference, before = copy.deepcopy(model), parameters_of(model)
    logged = train_one_iteration(model, batch)
    torch.manual_seed(SEED)
    expected = cyclegan_reference_iteration(reference, cfg, batch)
    # The seeded draws gave each discriminator some stored fakes (and stored new ones instead).
    for name, pool in model.pools.items():
        assert not torch.equal(torch.cat(pool.images), stored[name]), name
    assert_losses_match(logged, expected)
    assert_same_updates(model, reference, before)


# ----- pix2pix (junyanz/pytorch-CycleGAN-and-pix2pix, pix2pix_model.py) ----------------------------

def pix2pix_reference_iteration(m, cfg, batch) -> dict[str, torch.Tensor]:
    """pix2pix_model.py, as src/utils/reference_iterations.py writes it out."""
    return Pix2PixReference(m, optimizer=lambda *nets: adam(cfg, *nets))(batch)


@pytest.mark.parametrize("fast_conv", (False, True))
def test_pix2pix_matches_the_reference_iteration(train_cfg, fast_conv):
    """With dropout on (re-seeded: same masks). Parameters are compared, not the batch-norm running
    statistics: the reference feeds D the fake pair first and the real pair second, the model the
    other way round, which changes only the order of the running-average updates (unused in
    training, and pix2pix samples with batch statistics). With and without the rewritten
    convolutions (model.fast_conv, in both copies)."""
    cfg, model, reference = build(train_cfg, "pix2pix", "data=shapes_paired", f"model.fast_conv={str(fast_conv).lower()}")
    assert any(isinstance(mod, torch.nn.Dropout) for mod in model.G.modules())
    batch, before = random_batch(cfg), parameters_of(model)
    logged = train_one_iteration(model, batch)
    torch.manual_seed(SEED)
    expected = pix2pix_reference_iteration(reference, cfg, batch)
    assert_losses_match(logged, expected)
    assert_same_updates(model, reference, before, buffers=False)


# ----- U-GAT-IT (znxlwm/UGATIT-pytorch, UGATIT.py train()) ----------------------------------------

def ugatit_reference_iteration(m, cfg, batch) -> dict[str, torch.Tensor]:
    """UGATIT.py train(), as src/utils/reference_iterations.py writes it out."""
    return UGATITReference(m, optimizer=lambda *nets: adam(cfg, *nets))(batch)


@pytest.mark.parametrize("light,fast_conv", ((True, False), (False, False), (True, True)))
def test_ugatit_matches_the_reference_iteration(train_cfg, light, fast_conv):
    """Spectral-norm vectors included: each discriminator runs as often as in the port (twice in
    the D step, once in the G step), so their power iterations agree too. The light generator
    and the full one (its gamma/beta MLP on the whole feature map); with and without the
    rewritten convolutions (model.fast_conv, in both copies)."""
    cfg, model, reference = build(train_cfg, "ugatit", f"model.generator.light={str(light).lower()}",
                                  f"model.fast_conv={str(fast_conv).lower()}")
    batch, before = random_batch(cfg), parameters_of(model)
    logged = train_one_iteration(model, batch)
    torch.manual_seed(SEED)
    expected = ugatit_reference_iteration(reference, cfg, batch)
    assert_losses_match(logged, expected)
    assert_same_updates(model, reference, before)


# ----- NICE-GAN (alpc91/NICE-GAN-pytorch, NICE.py train()) ----------------------------------------

def nicegan_reference_iteration(m, cfg, batch) -> dict[str, torch.Tensor]:
    """NICE.py train(), as src/utils/reference_iterations.py writes it out."""
    return NICEGANReference(m, optimizer=lambda *nets: adam(cfg, *nets))(batch)


def freeze_power_iterations(module: torch.nn.Module) -> None:
    """Spectral norm without its power-iteration step: sigma = u^T W v with fixed u, v, first
    brought to W's leading singular vectors (at build they are random, so a frozen sigma could be
    near zero, and a plain SGD step through W / sigma unbounded)."""
    for mod in module.modules():
        for hook in mod._forward_pre_hooks.values():
            if hasattr(hook, "n_power_iterations"):
                with torch.no_grad():
                    weight = hook.reshape_weight_to_matrix(getattr(mod, hook.name + "_orig"))
                    _power_iteration(weight, getattr(mod, hook.name + "_u"),
                                     getattr(mod, hook.name + "_v"), 50, hook.eps)
                hook.n_power_iterations = 0


@pytest.mark.parametrize("light,fast_conv", ((True, False), (False, False), (True, True)))
def test_nicegan_matches_the_reference_iteration(train_cfg, light, fast_conv):
    """The public generator step runs each full discriminator on the reals only to take the
    encoder's latent, which also advances the classifier's spectral-norm power iteration once
    more than the model does (it runs the classifier on the fakes only). That changes the
    estimate of sigma, not the objective, so this comparison fixes u and v in both copies.
    Both generator modes: light (pooled features into the gamma/beta MLP) and full
    (flattened features); light also with the rewritten convolutions (model.fast_conv, in both copies)."""
    cfg, model, reference = build(train_cfg, "nicegan", f"model.generator.light={light}",
                                  f"model.fast_conv={str(fast_conv).lower()}")
    freeze_power_iterations(model)
    freeze_power_iterations(reference)
    batch, before = random_batch(cfg), parameters_of(model)
    logged = train_one_iteration(model, batch)
    torch.manual_seed(SEED)
    expected = nicegan_reference_iteration(reference, cfg, batch)
    assert_losses_match(logged, expected)
    assert_same_updates(model, reference, before)


def test_nicegan_discriminator_step_matches_with_live_power_iteration(train_cfg):
    """Before the generator steps, the model and the public code run every spectral-norm layer
    equally often, so the discriminator loss agrees with the power iteration running."""
    cfg, model, reference = build(train_cfg, "nicegan")
    batch = random_batch(cfg)
    logged = train_one_iteration(model, batch)
    torch.manual_seed(SEED)
    expected = nicegan_reference_iteration(reference, cfg, batch)
    assert_losses_match(logged, {"D": expected["D"]})
    # and the encoders, trained by the D step only, end identical
    for name in ("D_A.encoder", "D_B.encoder"):
        ours, theirs = model.get_submodule(name), reference.get_submodule(name)
        for (n, p), q in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-8, msg=lambda m, n=n: f"{name}.{n}: {m}")


@pytest.mark.parametrize("model_name", ["cyclegan", "ugatit", "nicegan"])
def test_steps_move_every_parameter_by_the_reference_gradient(train_cfg, model_name):
    """Under plain SGD an update is the gradient itself (lr times it, weight decay included), not
    its sign, as Adam's first step is: a term back-propagated twice, or into the wrong player,
    or a step's parts that miss one, moves the weights by other amounts. These models back-
    propagate their generators' objective in parts (one per direction, then identity or
    reconstruction); the reference code in one sum."""
    cfg, model, reference = build(train_cfg, model_name, "model.optimizer.type=sgd")
    if model_name == "nicegan":   # (as in its Adam comparison: the power iteration runs more often there)
        freeze_power_iterations(model)
        freeze_power_iterations(reference)
    batch, before = random_batch(cfg), parameters_of(model)
    logged = train_one_iteration(model, batch)
    torch.manual_seed(SEED)
    run = {"cyclegan": cyclegan_reference_iteration, "ugatit": ugatit_reference_iteration,
           "nicegan": nicegan_reference_iteration}[model_name]
    expected = run(reference, cfg, batch)
    assert_losses_match(logged, expected)
    # (lr x a gradient's rounding error, where the gradient is exactly zero, is far below atol)
    assert_same_updates(model, reference, before, atol=1e-10)


@pytest.mark.parametrize("model_name", ["cyclegan", "ugatit"])
def test_reference_comparison_detects_a_changed_loss_weight(train_cfg, model_name):
    """The comparison has teeth: a model trained with another cycle weight does not pass it."""
    cfg, model, reference = build(train_cfg, model_name, "loss.weights.cycle=3.0")
    reference_cfg = train_cfg(f"model={model_name}")
    batch = random_batch(cfg)
    logged = train_one_iteration(model, batch)
    torch.manual_seed(SEED)
    run = cyclegan_reference_iteration if model_name == "cyclegan" else ugatit_reference_iteration
    expected = run(reference, reference_cfg, batch)
    with pytest.raises(AssertionError):
        assert_losses_match(logged, {k: v for k, v in expected.items() if k.startswith("cycle")})


# ----- the layers the models share, against their literal formulas --------------------------------

def test_adalin_and_lin_equal_their_literal_formula():
    """AdaLIN/LIN are computed as one `x * scale + shift`; the formula written out (two normalised
    copies of x, mixed by rho, then gamma and beta; biased variances) gives the same values and
    the same gradients, for mixing ratios strictly between the IN and LN limits."""
    from src.nets.adalin import LIN, AdaLIN

    def literal(x, rho, gamma, beta, eps):
        in_mean, in_var = x.mean((2, 3), keepdim=True), x.var((2, 3), keepdim=True, unbiased=False)
        ln_mean, ln_var = x.mean((1, 2, 3), keepdim=True), x.var((1, 2, 3), keepdim=True, unbiased=False)
        out = rho * (x - in_mean) / torch.sqrt(in_var + eps) + (1 - rho) * (x - ln_mean) / torch.sqrt(ln_var + eps)
        return out * gamma + beta

    torch.manual_seed(0)
    x = (torch.randn(2, 6, 9, 7) * 3 + 1).requires_grad_(True)
    gamma, beta = torch.randn(2, 6, requires_grad=True), torch.randn(2, 6, requires_grad=True)
    adalin, lin = AdaLIN(6), LIN(6)
    with torch.no_grad():
        adalin.rho.uniform_(0.05, 0.95)
        lin.rho.uniform_(0.05, 0.95)
        lin.gamma.normal_(1, 0.5)
        lin.beta.normal_(0, 0.5)
    cases = [(adalin(x, gamma, beta), literal(x, adalin.rho, gamma[:, :, None, None], beta[:, :, None, None], adalin.eps),
              [x, gamma, beta, adalin.rho]),
             (lin(x), literal(x, lin.rho, lin.gamma, lin.beta, lin.eps), [x, lin.rho, lin.gamma, lin.beta])]
    for ours, expected, inputs in cases:
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(ours)
        for a, b in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(expected, inputs, g)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fused_adam_makes_the_default_adam_update():
    """The models' Adam uses torch's fused kernel; over several steps it moves the parameters as
    torch's default per-tensor Adam does, weight decay included."""
    torch.manual_seed(0)
    params = [torch.randn(300, 7), torch.randn(5)]
    grads = [[torch.randn_like(p) * scale for p in params] for scale in (1e-3, 1.0, 1e-6, 0.3)]
    results = []
    for kernel in ({}, adam_kernel(params)):
        ps = [torch.nn.Parameter(p.clone()) for p in params]
        opt = torch.optim.Adam(ps, lr=2e-4, betas=(0.5, 0.999), weight_decay=1e-4, **kernel)
        for step_grads in grads:
            for p, g in zip(ps, step_grads):
                p.grad = g.clone()
            opt.step()
        results.append(ps)
    assert adam_kernel(params) == {"fused": True}
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("make_layer,shape", [(lambda: torch.nn.Conv2d(6, 5, 4, stride=2), (2, 6, 9, 9)),
                                              (lambda: torch.nn.Linear(7, 3, bias=False), (4, 7))])
def test_spectral_norm_matches_torch_spectral_norm(make_layer, shape):
    """The discriminators' spectral norm (cheaper backward) against torch's own: outputs, the
    power-iteration vectors and the gradients of two calls that share one backward, as a
    discriminator step does with its real and fake batches."""
    from src.nets.spectral_norm import spectral_norm

    torch.manual_seed(0)
    plain = make_layer()
    ours, theirs = spectral_norm(copy.deepcopy(plain)), torch.nn.utils.spectral_norm(copy.deepcopy(plain))
    theirs.load_state_dict(ours.state_dict())  # the same random start of the power iteration
    assert type(ours._forward_pre_hooks[next(iter(ours._forward_pre_hooks))]).__name__ == "FastSpectralNorm"
    x, y = torch.randn(shape, requires_grad=True), torch.randn(shape)
    outputs = []
    for layer in (ours, theirs):
        layer.zero_grad()
        x.grad = None
        out = layer(x).square().mean() + layer(y).sin().sum()
        out.backward()
        outputs.append((out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in layer.named_parameters()},
                        dict(layer.named_buffers())))
    (o1, gx1, gp1, b1), (o2, gx2, gp2, b2) = outputs
    torch.testing.assert_close(o1, o2)
    torch.testing.assert_close(gx1, gx2)
    for name in gp2:
        torch.testing.assert_close(gp1[name], gp2[name], rtol=1e-5, atol=1e-7)
    for name in b2:
        torch.testing.assert_close(b1[name], b2[name])
