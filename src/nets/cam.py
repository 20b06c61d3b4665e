"""Class Activation Map (CAM) attention of U-GAT-IT, and NICE-GAN's residual variant.

An auxiliary classifier reads the global average- and max-pooled feature map and says which
domain the image comes from; its weights say how much each channel matters for that decision,
so the feature map is rescaled by them, the two rescaled maps are concatenated and fused back to
C channels by a 1x1 conv. The channel sum of the fused map is the attention heatmap, the
classifier's outputs are the "CAM logits" (trained by the models' CAM losses).

The public codes differ in how the classifier treats the two pooled vectors; `classifier` picks:
- "shared": one 1-unit linear layer applied to both, logits (B, 2). This is the paper's
  auxiliary classifier as the authors' TensorFlow code builds it (the GMP call reuses the GAP
  call's weights), and U-GAT-IT's default here.
- "separate": two 1-unit linear layers, one for GAP and one for GMP, logits (B, 2). This is the
  U-GAT-IT PyTorch port (C more weights); the benchmark uses it to match the port.
- "joint": one linear layer on the concatenation [GAP; GMP] (2C -> 1), logit (B, 1). This is
  NICE-GAN's public code. Without spectral norm it equals "separate" with the two logits summed;
  with spectral norm the whole 2C vector is normalised at once.
All are bias-free, as in both PyTorch codes.

The rescaling uses the classifier's effective weight, spectrally normalised when `spectral` is
on, i.e. the weight the logits were computed with, as in U-GAT-IT's authors' TensorFlow code;
with `raw_rescale` it reads the unnormalised `weight_orig`, as the PyTorch codes do
(`list(fc.parameters())[0]`): NICE-GAN's authors' own code, which also leaves the 1x1 fusion
conv without spectral norm (`plain_fusion`). The two scale the attention branch differently
(by 1/sigma of the classifier and of the fusion conv), which its trainable gamma then meets.
"""
import torch
import torch.nn as nn

from src.nets.spectral_norm import spectral_norm

CLASSIFIER_TYPES = ("separate", "shared", "joint")
ACTIVATIONS = ("relu", "lrelu")


def spectral_norm_if(module: nn.Module, enabled: bool) -> nn.Module:
    """Wrap `module` in spectral norm when `enabled`.

    The old hook-based `torch.nn.utils.spectral_norm` is used on purpose: the newer
    `torch.nn.utils.parametrizations.spectral_norm` creates a class at run time, which cannot be
    pickled, and `ddp_spawn` pickles the model. The hook API adds buffers (u, v), not parameters.
    Its backward is replaced by a cheaper one with the same result (src/nets/spectral_norm.py).
    """
    return spectral_norm(module) if enabled else module


def rescaling_weight(linear: nn.Module, raw: bool) -> torch.Tensor:
    """A classifier layer's weight that rescales the feature map: the effective one (read after
    the layer's call: with spectral norm the call is what computes it), or with `raw` the
    unnormalised `weight_orig` where the layer is spectrally normalised."""
    return linear.weight_orig if raw and hasattr(linear, "weight_orig") else linear.weight


def activation_layer(name: str) -> nn.Module:
    """ReLU in the generators, LeakyReLU(0.2) in the discriminators."""
    if name == "relu":
        return nn.ReLU()
    if name == "lrelu":
        return nn.LeakyReLU(0.2)
    raise ValueError(f"Unknown activation '{name}'; choose one of {ACTIVATIONS}")


class _SeparateClassifier(nn.Module):
    def __init__(self, channels: int, spectral: bool, raw_rescale: bool = False):
        super().__init__()
        self.raw_rescale = raw_rescale
        self.gap_fc = spectral_norm_if(nn.Linear(channels, 1, bias=False), spectral)
        self.gmp_fc = spectral_norm_if(nn.Linear(channels, 1, bias=False), spectral)

    def forward(self, gap: torch.Tensor, gmp: torch.Tensor):
        logits = torch.cat([self.gap_fc(gap), self.gmp_fc(gmp)], 1)
        return (logits, rescaling_weight(self.gap_fc, self.raw_rescale)[0],
                rescaling_weight(self.gmp_fc, self.raw_rescale)[0])


class _SharedClassifier(nn.Module):
    def __init__(self, channels: int, spectral: bool, raw_rescale: bool = False):
        super().__init__()
        self.raw_rescale = raw_rescale
        self.fc = spectral_norm_if(nn.Linear(channels, 1, bias=False), spectral)

    def forward(self, gap: torch.Tensor, gmp: torch.Tensor):
        # One call for both inputs, so spectral norm runs one power iteration per forward.
        logits = self.fc(torch.stack([gap, gmp], 1)).squeeze(2)
        weight = rescaling_weight(self.fc, self.raw_rescale)[0]
        return logits, weight, weight


class _JointClassifier(nn.Module):
    def __init__(self, channels: int, spectral: bool, raw_rescale: bool = False):
        super().__init__()
        self.channels, self.raw_rescale = channels, raw_rescale
        self.fc = spectral_norm_if(nn.Linear(2 * channels, 1, bias=False), spectral)

    def forward(self, gap: torch.Tensor, gmp: torch.Tensor):
        logits = self.fc(torch.cat([gap, gmp], 1))
        w_gap, w_gmp = rescaling_weight(self.fc, self.raw_rescale)[0].split(self.channels)
        return logits, w_gap, w_gmp


_CLASSIFIERS = {"separate": _SeparateClassifier, "shared": _SharedClassifier, "joint": _JointClassifier}


class CAMAttention(nn.Module):
    """U-GAT-IT CAM: `act(conv1x1([w_gap * x, w_gmp * x]))`.

    forward(x) returns (attended map (B, C, H, W), CAM logits (B, 2) or (B, 1) for "joint",
    heatmap (B, 1, H, W)).
    """

    def __init__(self, channels: int, classifier: str = "separate", activation: str = "relu",
                 spectral: bool = False, raw_rescale: bool = False, plain_fusion: bool = False):
        super().__init__()
        if classifier not in _CLASSIFIERS:
            raise ValueError(f"cam_classifier={classifier!r} (model.generator.cam_classifier, and each "
                             f"discriminator's) is not a CAM classifier: choose one of {CLASSIFIER_TYPES}")
        self.classifier = _CLASSIFIERS[classifier](channels, spectral, raw_rescale)
        self.fuse = spectral_norm_if(nn.Conv2d(2 * channels, channels, 1), spectral and not plain_fusion)
        self.act = activation_layer(activation)

    def merge(self, fused: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """How the fused map and the input combine before the activation; plain CAM keeps the fused map."""
        return fused

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gap, gmp = x.mean(dim=(2, 3)), x.amax(dim=(2, 3))
        logits, w_gap, w_gmp = self.classifier(gap, gmp)
        weighted = torch.cat([x * w_gap[None, :, None, None], x * w_gmp[None, :, None, None]], 1)
        out = self.act(self.merge(self.fuse(weighted), x))
        return out, logits, out.sum(1, keepdim=True)


class ResidualCAMAttention(CAMAttention):
    """NICE-GAN's attention: `act(gamma * conv1x1([w_gap * x, w_gmp * x]) + x)`, gamma a scalar init 0.

    Starting at gamma = 0 the block is the identity (plus activation), so the discriminator first
    learns plain features and lets the attention in as it becomes useful. Defaults follow NICE-GAN's
    public code: one joint classifier, LeakyReLU(0.2), spectral norm but on the fusion conv, the
    rescaling by the classifier's raw weight.
    """

    def __init__(self, channels: int, classifier: str = "joint", activation: str = "lrelu",
                 spectral: bool = True, raw_rescale: bool = True, plain_fusion: bool = True):
        super().__init__(channels, classifier, activation, spectral, raw_rescale, plain_fusion)
        self.gamma = nn.Parameter(torch.zeros(1))

    def merge(self, fused: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * fused + x
