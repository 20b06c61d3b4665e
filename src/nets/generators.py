"""Generators of pix2pix (U-Net) and CycleGAN (ResNet), per Isola et al. 2017 / Zhu et al. 2017."""
import torch
import torch.nn as nn

from src.nets.norms import norm_layer, uses_bias
from src.nets.tanh import Tanh


class ResnetBlock(nn.Module):
    """Two 3x3 convs with reflection padding and a residual connection (`Rk`)."""

    def __init__(self, dim: int, norm: str, use_dropout: bool = False):
        super().__init__()
        norm_fn, bias = norm_layer(norm), uses_bias(norm)
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_fn(dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_fn(dim)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def resnet_blocks_for(image_size: int | None) -> int:
    """CycleGAN's residual blocks for an image size: 9 at 256 px and more, 6 below."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"model.generator.n_blocks=auto needs model.generator.image_size (the crop size, "
                         f"data.crop_size), got {image_size!r}")
    return 9 if image_size >= 256 else 6


class ResnetGenerator(nn.Module):
    """c7s1-ngf, d(2ngf), d(4ngf), R(4ngf) x n_blocks, u(2ngf), u(ngf), c7s1-output_nc, tanh.

    The paper uses 9 blocks at 256 px and more, 6 below (128 px); `n_blocks="auto"` chooses by
    `image_size`. `encoder` (everything up to and including the residual blocks) and `decoder`
    are separate so the latent callback can read the encoder's output.
    """

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int | str = 9,
                 norm: str = "instance", use_dropout: bool = False, n_downsampling: int = 2,
                 image_size: int | None = None):
        super().__init__()
        if n_blocks == "auto":
            n_blocks = resnet_blocks_for(image_size)
        if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 0:
            raise ValueError(f"model.generator.n_blocks={n_blocks!r} must be an integer >= 0 or auto")
        norm_fn, bias = norm_layer(norm), uses_bias(norm)
        enc = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=bias), norm_fn(ngf), nn.ReLU(True)]
        for i in range(n_downsampling):
            c = ngf * 2 ** i
            enc += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias), norm_fn(2 * c), nn.ReLU(True)]
        dim = ngf * 2 ** n_downsampling
        enc += [ResnetBlock(dim, norm, use_dropout) for _ in range(n_blocks)]
        dec = []
        for i in range(n_downsampling):
            c = ngf * 2 ** (n_downsampling - i)
            dec += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                    norm_fn(c // 2), nn.ReLU(True)]
        dec += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), Tanh()]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.size_multiple = 2 ** n_downsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class UnetSkipBlock(nn.Module):
    """One U-Net level: down conv, the inner levels, up conv, and the skip concatenation."""

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None,
                 submodule: nn.Module | None = None, outermost: bool = False, innermost: bool = False,
                 norm: str = "batch", use_dropout: bool = False, use_skip: bool = True):
        super().__init__()
        self.outermost, self.use_skip = outermost, use_skip
        norm_fn, bias = norm_layer(norm), uses_bias(norm)
        input_nc = outer_nc if input_nc is None else input_nc
        down_conv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=bias)
        # Without skips (the paper's encoder-decoder ablation) the up conv sees only the inner path.
        up_in = inner_nc if innermost or not use_skip else inner_nc * 2
        if outermost:
            down = [down_conv]
            up = [nn.ReLU(True), nn.ConvTranspose2d(up_in, outer_nc, 4, stride=2, padding=1), Tanh()]
        else:
            # No norm at the innermost (1x1 at 256 px) level, as in both authors' codes: batch norm
            # over one 1x1 map at batch 1, or instance norm over any 1x1 map, zeroes it.
            down = [nn.LeakyReLU(0.2, True), down_conv] + ([] if innermost else [norm_fn(inner_nc)])
            up = [nn.ReLU(True), nn.ConvTranspose2d(up_in, outer_nc, 4, stride=2, padding=1, bias=bias),
                  norm_fn(outer_nc)]
            if use_dropout:
                up.append(nn.Dropout(0.5))
        middle = [] if submodule is None else [submodule]
        self.model = nn.Sequential(*down, *middle, *up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        if self.outermost or not self.use_skip:
            return y
        return torch.cat([x, y], 1)


def unet_depth(image_size: int | None) -> int:
    """Downsamplings as many times as a side of `image_size` halves evenly: to 1 pixel for a power
    of two (8 for 256: unet_256), to a 3 px bottleneck for 768 = 3 x 256 (its largest power of two,
    9 for 512, would need sides of a multiple of 512). At least 5, the U-Net's least: a size that
    halves fewer times is refused by the size check, naming the sizes that fit."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"model.generator.num_downs=auto needs model.generator.image_size (the crop size, "
                         f"data.crop_size) of at least 32 px, got {image_size!r}")
    halvings = (image_size & -image_size).bit_length() - 1
    return max(halvings, 5)


class UnetGenerator(nn.Module):
    """pix2pix U-Net: C64-C128-C256-C512 x (num_downs - 3), mirrored decoder with skips.

    `num_downs` 8 is `unet_256` (a 256 px image reaches 1x1), 7 is `unet_128`; "auto" takes as
    many as `image_size` halves evenly (`unet_depth`: down to 1x1 for a power of two, 8 at 256 px,
    the paper's). Dropout 0.5 sits
    in the first three decoder blocks (counted from the bottleneck), as the paper says; the
    junyanz code skips the innermost one and drops in the next three instead. `use_skip=False` gives the
    plain encoder-decoder of the paper's ablation.
    """

    def __init__(self, input_nc: int = 3, output_nc: int = 3, num_downs: int | str = 8, ngf: int = 64,
                 norm: str = "batch", use_dropout: bool = True, use_skip: bool = True, image_size: int | None = None):
        super().__init__()
        if num_downs == "auto":
            num_downs = unet_depth(image_size)
        if isinstance(num_downs, bool) or not isinstance(num_downs, int) or num_downs < 5:
            raise ValueError(f"model.generator.num_downs={num_downs!r} must be an integer >= 5 (7 for unet_128, 8 for "
                             f"unet_256), or auto (from data.crop_size)")
        kw = dict(norm=norm, use_skip=use_skip)
        block = UnetSkipBlock(ngf * 8, ngf * 8, innermost=True, use_dropout=use_dropout, **kw)
        for level in range(num_downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, submodule=block, use_dropout=use_dropout and level < 2, **kw)
        block = UnetSkipBlock(ngf * 4, ngf * 8, submodule=block, **kw)
        block = UnetSkipBlock(ngf * 2, ngf * 4, submodule=block, **kw)
        block = UnetSkipBlock(ngf, ngf * 2, submodule=block, **kw)
        self.model = UnetSkipBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, **kw)
        self.size_multiple = 2 ** num_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
