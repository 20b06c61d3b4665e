"""NICE-GAN networks (Chen et al., CVPR 2020): a discriminator that is also the encoder, and a decoder-only generator.

Translation is `G_{x->y}(E_x(x))`: the source domain's discriminator encoder E_x produces the
latent code, and the generator only decodes it. The discriminator is split into two submodules,
`encoder` (E) and `classifier` (C), so that a model can
- run E once per image and hand its output both to C and to a generator, and
- give E and C to different optimizers or freeze E during the generator step (decoupled
  training: E learns only from the discriminator objective).

Shapes follow the public code (alpc91/NICE-GAN-pytorch) at its reference configuration.
"""
import math

import torch
import torch.nn as nn

from src.nets.adalin import LIN, AdaLINResnetBlock, GammaBetaMLP
from src.nets.cam import ResidualCAMAttention
from src.nets.ugatit import N_DOWNSAMPLING, discriminator_conv, patch_logits_conv, to_image_block

# The public code parameterises LIN's mixing ratio as softmax over (IN, LN) logits initialised at
# (1, 3.2), i.e. rho = 1 / (1 + e^2.2) ~ 0.1; with clipping (see adalin.py) we start from that value.
# Its AdaLIN logits (3.2, 1) give rho ~ 0.9, AdaLIN's default.
NICE_LIN_RHO_INIT = 1.0 / (1.0 + math.exp(2.2))


#: how the encoder's attention meets spectral norm (src/nets/cam.py): "public_code", the authors'
#: code's (a plain 1x1 fusion conv, the feature map rescaled by the classifier's raw weight), or
#: "normalised" (both normalised, as U-GAT-IT's; this codebase's form before the setting existed)
ATTENTION_FORMS = ("public_code", "normalised")


class NICEGANEncoder(nn.Module):
    """E: two stride-2 4x4 convs (C ndf, C 2ndf), then residual CAM attention.

    forward(x) -> (latent (B, 2ndf, H/4, W/4), CAM logit (B, 1), heatmap (B, 1, H/4, W/4)).
    The latent is the attended map, the same tensor the classifier reads.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, spectral: bool = True, cam_classifier: str = "joint",
                 attention: str = "public_code"):
        super().__init__()
        if attention not in ATTENTION_FORMS:
            raise ValueError(f"model.discriminator.attention={attention!r} must be one of {', '.join(ATTENTION_FORMS)}")
        self.latent_nc = ndf * 2 ** (N_DOWNSAMPLING - 1)
        self.features = nn.Sequential(discriminator_conv(input_nc, ndf, 2, spectral),
                                      discriminator_conv(ndf, self.latent_nc, 2, spectral))
        public = attention == "public_code"
        self.attention = ResidualCAMAttention(self.latent_nc, classifier=cam_classifier, spectral=spectral,
                                              raw_rescale=public, plain_fusion=public)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.attention(self.features(x))


class NICEGANClassifier(nn.Module):
    """C: a shared trunk of n_layers - 6 stride-2 convs, then two heads on its output.

    - local head: one stride-1 conv and the logit conv; receptive field 70 px at n_layers 7;
    - global head: two more stride-2 convs, one stride-1 conv and the logit conv; 286 px.
    With the encoder's two downsamplings, the global path has the depth of U-GAT-IT's global
    discriminator with the same `n_layers` and the local path that of its local one (n_layers - 2).
    forward(latent) -> (local logits, global logits), one logit per patch each.
    """

    def __init__(self, ndf: int = 64, n_layers: int = 7, spectral: bool = True):
        super().__init__()
        if n_layers < 6:
            raise ValueError("model.discriminator.n_layers must be >= 6 for NICE-GAN (7 in the paper's code)")
        c = ndf * 2 ** (N_DOWNSAMPLING - 1)
        trunk = []
        for _ in range(n_layers - 6):
            trunk.append(discriminator_conv(c, 2 * c, 2, spectral))
            c *= 2
        self.trunk = nn.Sequential(*trunk)
        self.local_head = nn.Sequential(discriminator_conv(c, 2 * c, 1, spectral), patch_logits_conv(2 * c, spectral))
        self.global_head = nn.Sequential(discriminator_conv(c, 2 * c, 2, spectral),
                                         discriminator_conv(2 * c, 4 * c, 2, spectral),
                                         discriminator_conv(4 * c, 8 * c, 1, spectral),
                                         patch_logits_conv(8 * c, spectral))

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.trunk(latent)
        return self.local_head(shared), self.global_head(shared)


class NICEGANDiscriminator(nn.Module):
    """D = C(E(x)) with E and C as the submodules `encoder` and `classifier`.

    forward(x) -> (local logits, global logits, CAM logit (B, 1), heatmap, latent).
    To reuse one encoder pass: `latent, cam_logit, heatmap = D.encoder(x)`, then
    `D.classify(latent)` and `G(latent)`.

    Parameter count at ndf 64, n_layers 7: 46,874,433, as in the public code. Every conv and
    linear layer is spectrally normalised when `spectral`, but for the attention's 1x1 fusion conv
    under `attention="public_code"` (`ATTENTION_FORMS`); spectral norm adds buffers only.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 7, spectral: bool = True,
                 cam_classifier: str = "joint", attention: str = "public_code"):
        super().__init__()
        self.encoder = NICEGANEncoder(input_nc, ndf, spectral, cam_classifier, attention)
        self.classifier = NICEGANClassifier(ndf, n_layers, spectral)
        self.latent_nc = self.encoder.latent_nc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent code the generators decode (and the latent callbacks analyse)."""
        return self.encoder(x)[0]

    def classify(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(latent)

    def encoder_parameters(self):
        return self.encoder.parameters()

    def classifier_parameters(self):
        return self.classifier.parameters()

    def forward(self, x: torch.Tensor):
        latent, cam_logit, heatmap = self.encoder(x)
        local_out, global_out = self.classifier(latent)
        return local_out, global_out, cam_logit, heatmap, latent


def subpixel_upsample_block(in_nc: int, out_nc: int) -> nn.Sequential:
    """Pad, conv3x3 to out_nc, LIN, ReLU, conv1x1 to 4*out_nc, PixelShuffle(2), LIN, ReLU.

    The public code's sub-pixel upsampling (its comments report quality on par with nearest
    upsampling + conv); it is what its parameter count includes.
    """
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(in_nc, out_nc, 3, bias=False),
                         LIN(out_nc, NICE_LIN_RHO_INIT), nn.ReLU(True),
                         nn.Conv2d(out_nc, 4 * out_nc, 1), nn.PixelShuffle(2),
                         LIN(out_nc, NICE_LIN_RHO_INIT), nn.ReLU(True))


class NICEGANGenerator(nn.Module):
    """Decoder only: latent -> conv3x3 to 4ngf + LIN + ReLU; gamma/beta MLP; n_res AdaLIN blocks;
    two sub-pixel upsamplings with LIN; c7s1-output_nc; tanh.

    forward(latent) -> image in [-1, 1] at 4x the latent's resolution. `latent_nc` is the
    discriminator encoder's output width, 2 * ndf (default 2 * ngf, as the public code assumes
    ngf == ndf). light=False flattens the map into the MLP and fixes the size to img_size.

    Parameter count at ngf 64, n_res 6, light: 8,100,928, the public 8,104,640 less 3,712
    because rho is one clipped value per channel here instead of two softmax logits.
    """

    def __init__(self, output_nc: int = 3, ngf: int = 64, n_res: int = 6, img_size: int = 256,
                 light: bool = True, latent_nc: int | None = None):
        super().__init__()
        if n_res < 0:
            raise ValueError("model.generator.n_res must be >= 0")
        dim = ngf * 2 ** N_DOWNSAMPLING
        latent_nc = latent_nc or ngf * 2 ** (N_DOWNSAMPLING - 1)
        self.from_latent = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(latent_nc, dim, 3),
                                         LIN(dim, NICE_LIN_RHO_INIT), nn.ReLU(True))
        self.mlp = GammaBetaMLP(dim, light=light, map_size=img_size // 2 ** N_DOWNSAMPLING)
        self.adalin_blocks = nn.ModuleList(AdaLINResnetBlock(dim) for _ in range(n_res))
        up = [subpixel_upsample_block(ngf * 2 ** (N_DOWNSAMPLING - i), ngf * 2 ** (N_DOWNSAMPLING - i - 1))
              for i in range(N_DOWNSAMPLING)]
        self.upsample = nn.Sequential(*up, to_image_block(ngf, output_nc))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(latent)
        gamma, beta = self.mlp(h)
        for block in self.adalin_blocks:
            h = block(h, gamma, beta)
        return self.upsample(h)
