"""U-GAT-IT generator and discriminator (Kim et al., ICLR 2020).

Shapes follow the public PyTorch port (znxlwm/UGATIT-pytorch), so that with the port's separate
CAM classifiers (`cam_classifier=separate`) parameter counts match it; the default is the paper's
one shared classifier, a few hundred to a few thousand weights fewer. The differences are listed
in each class docstring. The discriminator depth comes from
`n_layers` (the port hard-codes 7 for the global and 5 for the local discriminator).
"""
import torch
import torch.nn as nn

from src.nets.adalin import LIN, AdaLINResnetBlock, GammaBetaMLP
from src.nets.cam import CAMAttention, spectral_norm_if
from src.nets.generators import ResnetBlock
from src.nets.tanh import Tanh

N_DOWNSAMPLING = 2  # the generator works at 1/4 resolution, as in CycleGAN


def nearest_upsample_block(in_nc: int, out_nc: int) -> nn.Sequential:
    """`uk` of U-GAT-IT: nearest x2, reflection pad, conv3x3 (bias-free, LIN follows), LIN, ReLU."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                         nn.Conv2d(in_nc, out_nc, 3, bias=False), LIN(out_nc), nn.ReLU(True))


def to_image_block(ngf: int, output_nc: int) -> nn.Sequential:
    """c7s1-output_nc with reflection padding, then tanh into [-1, 1]."""
    return nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, bias=False), Tanh())


class UGATITGenerator(nn.Module):
    """Encoder c7s1-ngf, d(2ngf), d(4ngf), n_res residual blocks (IN); CAM; AdaLIN decoder.

    forward(x) -> (image in [-1, 1], CAM logits (B, 2), heatmap (B, 1, H/4, W/4)).
    encode(x) -> the encoder feature map (B, 4ngf, H/4, W/4), before attention: the latent the
    analysis callbacks read.

    light=True (the default, memory-friendly) pools the attended map before the gamma/beta MLP
    and accepts any size that is a multiple of 4; light=False flattens it, which at img_size 256
    is a single 268M-weight layer and fixes the input size to img_size.

    Parameter count at ngf 64, n_res 4, light, with the port's separate CAM classifiers
    (10,591,680 with the default shared one): 10,591,936, the port's 10,589,888 plus 2,048
    biases in the encoder's residual blocks (the codebase's `ResnetBlock`; the port has them
    bias-free). A bias before instance norm is cancelled by it, so the function is the same.
    """

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_res: int = 4,
                 img_size: int = 256, light: bool = True, cam_classifier: str = "shared"):
        super().__init__()
        if n_res < 0:
            raise ValueError("model.generator.n_res must be >= 0")
        dim = ngf * 2 ** N_DOWNSAMPLING
        enc = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=False), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        for i in range(N_DOWNSAMPLING):
            c = ngf * 2 ** i
            enc += [nn.ReflectionPad2d(1), nn.Conv2d(c, 2 * c, 3, stride=2, bias=False),
                    nn.InstanceNorm2d(2 * c), nn.ReLU(True)]
        enc += [ResnetBlock(dim, "instance") for _ in range(n_res)]
        self.encoder = nn.Sequential(*enc)
        self.cam = CAMAttention(dim, classifier=cam_classifier, activation="relu")
        self.mlp = GammaBetaMLP(dim, light=light, map_size=img_size // 2 ** N_DOWNSAMPLING)
        self.adalin_blocks = nn.ModuleList(AdaLINResnetBlock(dim) for _ in range(n_res))
        up = [nearest_upsample_block(ngf * 2 ** (N_DOWNSAMPLING - i), ngf * 2 ** (N_DOWNSAMPLING - i - 1))
              for i in range(N_DOWNSAMPLING)]
        self.upsample = nn.Sequential(*up, to_image_block(ngf, output_nc))
        self.size_multiple = 2 ** N_DOWNSAMPLING

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, attended: torch.Tensor) -> torch.Tensor:
        """Image from the attended feature map: AdaLIN blocks styled by the MLP, then upsampling."""
        gamma, beta = self.mlp(attended)
        h = attended
        for block in self.adalin_blocks:
            h = block(h, gamma, beta)
        return self.upsample(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attended, cam_logit, heatmap = self.cam(self.encode(x))
        return self.decode(attended), cam_logit, heatmap


def discriminator_conv(in_nc: int, out_nc: int, stride: int, spectral: bool) -> nn.Sequential:
    """Reflection pad 1, 4x4 conv (spectral norm), LeakyReLU(0.2): stride 2 halves the map."""
    return nn.Sequential(nn.ReflectionPad2d(1),
                         spectral_norm_if(nn.Conv2d(in_nc, out_nc, 4, stride=stride), spectral),
                         nn.LeakyReLU(0.2, True))


def patch_logits_conv(in_nc: int, spectral: bool) -> nn.Sequential:
    """Reflection pad 1 and a bias-free 4x4 conv to one logit per patch."""
    return nn.Sequential(nn.ReflectionPad2d(1),
                         spectral_norm_if(nn.Conv2d(in_nc, 1, 4, bias=False), spectral))


class UGATITDiscriminator(nn.Module):
    """`n_layers` 4x4 convs: n_layers - 2 stride-2 (C ndf ... ndf*2^(n_layers-3)), one stride-1
    doubling the channels, CAM (LeakyReLU(0.2)), then the patch-logit conv.

    U-GAT-IT uses two per domain: global, n_layers 7 (receptive field 286 px, 53,130,176
    parameters at ndf 64) and local, n_layers 5 (70 px, 3,290,560), both as in the public port
    with its separate CAM classifiers (the default shared one: 53,128,128 and 3,290,048).
    forward(x) -> (patch logits (B, 1, h, w), CAM logits (B, 2), heatmap (B, 1, h', w')).

    With `spectral` every conv and linear layer is spectrally normalised (SPEC: "all
    discriminator convs"); the public codes leave CAM's 1x1 fusion conv unnormalised. Spectral
    norm adds buffers only, so the counts are unchanged.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 5, spectral: bool = True,
                 cam_classifier: str = "shared"):
        super().__init__()
        if n_layers < 3:
            raise ValueError(f"n_layers={n_layers} must be >= 3 (7 global, 5 local in U-GAT-IT)")
        layers = [discriminator_conv(input_nc, ndf, 2, spectral)]
        for i in range(n_layers - 3):
            layers.append(discriminator_conv(ndf * 2 ** i, ndf * 2 ** (i + 1), 2, spectral))
        c = ndf * 2 ** (n_layers - 3)
        layers.append(discriminator_conv(c, 2 * c, 1, spectral))
        self.features = nn.Sequential(*layers)
        self.cam = CAMAttention(2 * c, classifier=cam_classifier, activation="lrelu", spectral=spectral)
        self.head = patch_logits_conv(2 * c, spectral)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attended, cam_logit, heatmap = self.cam(self.features(x))
        return self.head(attended), cam_logit, heatmap
