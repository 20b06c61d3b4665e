"""Spectral normalisation with a cheaper backward, otherwise `torch.nn.utils.spectral_norm`.

torch's hook computes `W / sigma` with `sigma = u^T W v` (u, v from the power iteration, held
constant) as ordinary autograd ops, so the backward builds the gradient of the division and of
sigma separately: `G / sigma`, then `-G * W / sigma^2` summed, then the outer product `u v^T`
at full size, then their sum, about ten passes over a tensor the size of W. U-GAT-IT's and
NICE-GAN's discriminators hold 47-53M weights each, and that backward took about a quarter of a
U-GAT-IT iteration on CPU. The same gradient,

    dL/dW = (G - (<G, W> / sigma) u v^T) / sigma,

needs one dot product over W, one division and one in-place rank-1 update. Forward values,
buffers (weight_orig, weight_u, weight_v), the power iteration, checkpoints and pickling are
those of torch's hook: only the hook's class is swapped for the subclass below.
"""
import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.spectral_norm import SpectralNorm


class _SpectrallyNormalisedWeight(torch.autograd.Function):
    """`W / (u^T W v)` for a weight whose rows are its first dimension; u and v are constants."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        sigma = torch.dot(u, torch.mv(weight.reshape(weight.size(0), -1), v))
        ctx.save_for_backward(weight, u, v, sigma)
        return weight / sigma

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        weight, u, v, sigma = ctx.saved_tensors
        grad = grad.contiguous()
        # <G, W> / sigma^2 scales the rank-1 term; folded into u so no full-size outer product exists.
        coef = torch.dot(grad.reshape(-1), weight.reshape(-1)) / (sigma * sigma)
        grad_weight = grad / sigma
        grad_weight.view(weight.size(0), -1).addr_(u * -coef, v)
        return grad_weight, None, None


@torch.compiler.disable
@torch.no_grad()
def _power_iteration(weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor, steps: int,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's power iteration, step for step: new u and v, also written into the buffers `u`
    and `v` for the next call. The weight's backward keeps the new tensors, which no later call
    writes (torch updates the buffers in place and clones them after, so that D(real) then
    D(fake) keeps the vectors of the first call intact).

    Outside torch.compile graphs: inside one, the buffers' update becomes a write at the graph's
    end, and the backward, which may recompute the vectors from the buffers instead of keeping
    them, finds them overwritten ("modified by an inplace operation")."""
    u_buffer, v_buffer = u, v
    for _ in range(steps):
        v = nn.functional.normalize(torch.mv(weight_mat.t(), u), dim=0, eps=eps)
        u = nn.functional.normalize(torch.mv(weight_mat, v), dim=0, eps=eps)
    u_buffer.copy_(u)
    v_buffer.copy_(v)
    return u, v


class FastSpectralNorm(SpectralNorm):
    """torch's SpectralNorm hook whose weight goes through `_SpectrallyNormalisedWeight`."""

    def compute_weight(self, module: nn.Module, do_power_iteration: bool) -> torch.Tensor:
        weight = getattr(module, self.name + "_orig")
        # Tracing/exporting (TorchScript, ONNX) cannot record a Python autograd Function, and
        # without gradients the cheaper backward buys nothing: use torch's own computation.
        if self.dim != 0 or not weight.is_contiguous() or torch.jit.is_tracing() or not torch.is_grad_enabled():
            return super().compute_weight(module, do_power_iteration)
        u = getattr(module, self.name + "_u")
        v = getattr(module, self.name + "_v")
        if do_power_iteration and self.n_power_iterations > 0:
            u, v = _power_iteration(weight.reshape(weight.size(0), -1), u, v, self.n_power_iterations, self.eps)
        return _SpectrallyNormalisedWeight.apply(weight, u, v)


def spectral_norm_hooks(network: nn.Module):
    """The spectral-norm hooks (torch's or ours) of every layer in `network`."""
    for module in network.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, SpectralNorm):
                yield hook


def has_spectral_norm(network: nn.Module) -> bool:
    return any(True for _ in spectral_norm_hooks(network))


def spectral_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """`torch.nn.utils.spectral_norm(module)` with the cheaper backward (same state_dict keys)."""
    nn.utils.spectral_norm(module, name)
    for hook in module._forward_pre_hooks.values():
        if type(hook) is SpectralNorm and hook.name == name:
            hook.__class__ = FastSpectralNorm
    return module
