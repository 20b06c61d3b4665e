"""Layer-Instance Normalisation (LIN), its adaptive form (AdaLIN) and the decoder pieces built on them.

U-GAT-IT (Kim et al., ICLR 2020) mixes instance and layer normalisation per channel,
`rho * IN(a) + (1 - rho) * LN(a)`, with a learned ratio rho: LIN carries its own affine
gamma/beta (rho starts at 0, i.e. pure LN), AdaLIN takes gamma/beta from an MLP on the
attended encoder features (rho starts at 0.9, mostly IN). NICE-GAN uses the same layers.
The public U-GAT-IT port names LIN `ILN`.

Keeping rho in [0, 1]: U-GAT-IT stores rho as a plain parameter and clips it after every
generator update (`clip_rho_`). NICE-GAN's public code instead learns two logits per channel and
takes a softmax over (IN, LN), which needs no clipping. We use clipping for both models, so one
mechanism (and one logging function, `rho_statistics`) serves both; the NICE-GAN generator starts
from the same mixing ratios its softmax logits give at initialisation.

Statistics use the biased variance (the definition of IN/LN, and what U-GAT-IT's TensorFlow code
computes); the PyTorch ports use the unbiased one, which is undefined on a 1x1 map.
"""
import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from src.nets.layer_rewrite import rewrite_applies

EPS = 1e-5


class _MapStatistics(torch.autograd.Function):
    """(biased variance, mean) of each (image, channel) map of x (B, C, H, W), as
    `torch.var_mean(x, dim=(2, 3), keepdim=True, unbiased=False)`, from group norm's CPU kernel
    with one group per channel (its outputs mean and 1/std; the normalised copy it also writes is
    dropped), and a backward in one pass: d/dx = (dmean + 2 dvar (x - mean)) / HW. On the CPU
    var_mean's reduction is ~13x slower than that kernel (256 x 32x32: 0.83 against 0.06 ms;
    forward + backward 1.9 against 0.3 ms); equal up to float rounding (~2e-7)."""

    @staticmethod
    def forward(ctx, x):
        n, c, h, w = x.shape
        # eps 0: 1/std is inf on a constant map, and inf^-2 gives its variance, 0, exactly
        _, mean, rstd = torch.ops.aten.native_group_norm(x, None, None, n, c, h * w, c, 0.0)
        mean, var = mean.view(n, c, 1, 1), rstd.pow(-2).view(n, c, 1, 1)
        ctx.save_for_backward(x, mean)
        return var, mean

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_var, grad_mean):
        x, mean = ctx.saved_tensors
        hw = x.shape[2] * x.shape[3]   # an output the loss does not use comes as zeros (materialize_grads)
        slope = grad_var * (2.0 / hw)
        return torch.addcmul(grad_mean / hw - slope * mean, x, slope)


def map_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(variance, mean) over each (image, channel) map of x (B, C, H, W), biased, keepdim; in
    exported, traced or compiled graphs (and off float32 CPU tensors) torch's var_mean.

    Always in float32: under mixed precision, x is fp16 or bf16, and var_mean on it returns its
    dtype (it is on no autocast list). An fp16 variance overflows to inf for a map whose std
    passes 256 (the layer then outputs beta alone), and a bf16 mean, off by ~4e-3 of itself, is
    subtracted from every pixel. The cost: var_mean keeps the float32 copy for its backward, an
    fp32 copy of each LIN/AdaLIN input beside the half-precision one until the backward."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if x.dim() == 4 and rewrite_applies(x, None):
        return _MapStatistics.apply(x)
    return torch.var_mean(x, dim=(2, 3), keepdim=True, unbiased=False)


def instance_layer_mix_affine(x: torch.Tensor, rho: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                              eps: float = EPS) -> torch.Tensor:
    """`gamma * (rho * IN(x) + (1 - rho) * LN(x)) + beta` for x (B, C, H, W), rho (1, C, 1, 1) and
    gamma, beta broadcastable to (B, C, 1, 1).

    Both normalisations are affine in x per (image, channel), and so is their mix, so the whole
    layer is `x * scale + shift` with (B, C, 1, 1) coefficients: one statistics pass and one
    fused multiply-add over the map, and autograd keeps only x for the backward. Written
    literally (two normalised copies, their mix, then the affine) it is ~10 full-size passes and
    as many saved intermediates; this form is ~2.5x faster forward+backward on CPU and equal up
    to float rounding. LN's statistics come from IN's by the law of total variance (the mean of
    the per-channel variances plus the variance of the per-channel means), not a second pass.
    """
    in_var, in_mean = map_statistics(x)
    ln_mean = in_mean.mean(1, keepdim=True)
    ln_var = in_var.mean(1, keepdim=True) + (in_mean - ln_mean).pow(2).mean(1, keepdim=True)
    in_rstd, ln_rstd = torch.rsqrt(in_var + eps), torch.rsqrt(ln_var + eps)
    scale = rho * in_rstd + (1 - rho) * ln_rstd
    shift = rho * in_mean * in_rstd + (1 - rho) * ln_mean * ln_rstd
    return torch.addcmul(beta - shift * gamma, x, scale * gamma)


class _RhoMixNorm(nn.Module):
    """Holds the per-channel IN/LN ratio rho; `clip_rho_` and `rho_statistics` find layers by this type."""

    def __init__(self, num_features: int, rho_init: float, eps: float = EPS):
        super().__init__()
        self.eps = eps
        self.rho = nn.Parameter(torch.full((1, num_features, 1, 1), float(rho_init)))


class LIN(_RhoMixNorm):
    """Layer-Instance Normalisation with learned per-channel gamma (init 1) and beta (init 0); rho init 0."""

    def __init__(self, num_features: int, rho_init: float = 0.0, eps: float = EPS):
        super().__init__(num_features, rho_init, eps)
        self.gamma = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, num_features, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return instance_layer_mix_affine(x, self.rho, self.gamma, self.beta, self.eps)


class AdaLIN(_RhoMixNorm):
    """Adaptive LIN: gamma and beta of shape (B, C) come from outside (the MLP); rho init 0.9."""

    def __init__(self, num_features: int, rho_init: float = 0.9, eps: float = EPS):
        super().__init__(num_features, rho_init, eps)

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return instance_layer_mix_affine(x, self.rho, gamma[:, :, None, None], beta[:, :, None, None], self.eps)


def _mix_norms(module: nn.Module):
    return ((name, m) for name, m in module.named_modules() if isinstance(m, _RhoMixNorm))


@torch.no_grad()
def clip_rho_(module: nn.Module) -> None:
    """Clamp every LIN/AdaLIN rho in `module` to [0, 1] in place; call after each generator step.

    A plain parameter with clipping is U-GAT-IT's mechanism (its `RhoClipper`); we use it for
    NICE-GAN too instead of that code's softmax over (IN, LN) logits, so both models share it
    (SPEC allows either). The two start from the same rho and move it differently: an Adam step
    of a softmax logit moves rho by rho(1 - rho) times as much (0.09 at 0.1 or 0.9), so NICE-GAN's
    code's rho leaves its start about 10x slower, and its weight decay pulls the logits towards
    rho = 0.5 where here it pulls rho towards 0 (layer norm).
    """
    rhos = [norm.rho for _, norm in _mix_norms(module)]
    if rhos:   # two fused passes, not a kernel per layer each generator step
        torch._foreach_clamp_min_(rhos, 0.0)
        torch._foreach_clamp_max_(rhos, 1.0)


@torch.no_grad()
def rho_statistics(module: nn.Module) -> dict[str, tuple[float, float, float]]:
    """`{qualified layer name: (mean, min, max) of its rho}` for every LIN/AdaLIN, for logging."""
    return {name: (norm.rho.mean().item(), norm.rho.min().item(), norm.rho.max().item())
            for name, norm in _mix_norms(module)}


class GammaBetaMLP(nn.Module):
    """MLP giving AdaLIN's gamma and beta (B, C each) from the feature map that the decoder starts from.

    light=True global-average-pools first (FC C->C); light=False flattens the whole map, so its
    first layer has `map_size**2 * C * C` weights (at 256 px in U-GAT-IT: 64*64*256*256 = 268M)
    and the network only accepts the image size it was built for. All layers are bias-free, as in
    the public code.
    """

    def __init__(self, channels: int, light: bool = True, map_size: int | None = None):
        super().__init__()
        if not light and not map_size:
            raise ValueError("full mode (light=False) needs the feature map size: set img_size")
        self.light = light
        in_features = channels if light else map_size * map_size * channels
        self.shared = nn.Sequential(nn.Linear(in_features, channels, bias=False), nn.ReLU(True),
                                    nn.Linear(channels, channels, bias=False), nn.ReLU(True))
        self.gamma = nn.Linear(channels, channels, bias=False)
        self.beta = nn.Linear(channels, channels, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.light:
            h = x.mean(dim=(2, 3))
        else:
            h = x.flatten(1)
            expected = self.shared[0].in_features
            if h.size(1) != expected:
                raise ValueError(f"full-mode MLP (light=False) was built for {expected} features per image, "
                                 f"got a {tuple(x.shape[1:])} map: use the img_size it was built for, or light=True")
        h = self.shared(h)
        return self.gamma(h), self.beta(h)


class AdaLINResnetBlock(nn.Module):
    """Decoder residual block: (pad, conv3x3, AdaLIN, ReLU, pad, conv3x3, AdaLIN) + skip.

    Convs are bias-free: the normalisation that follows removes any per-channel offset.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False))
        self.norm1 = AdaLIN(dim)
        self.conv2 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False))
        self.norm2 = AdaLIN(dim)

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x), gamma, beta))
        return x + self.norm2(self.conv2(h), gamma, beta)
