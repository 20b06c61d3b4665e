"""Weight initialisations of the papers (pix2pix/CycleGAN: N(0, 0.02))."""
import torch.nn as nn

INIT_NAMES = ("normal", "xavier", "kaiming", "orthogonal", "uniform", "pytorch")


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise conv/linear weights by `init_type` and batch-norm scales by N(1, gain); `gain`
    is the standard deviation of `normal` and the half-width of `uniform` (pylearn2's irange).
    `pytorch` keeps the layers' own initialisation, as code that never calls an init does."""
    if init_type not in INIT_NAMES:
        raise ValueError(f"Unknown init '{init_type}' (config key model.init.type); choose one of {INIT_NAMES}")
    if init_type == "pytorch":
        return net

    def init_module(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # A spectrally normalised layer keeps its trainable weight in `weight_orig`.
            weight = getattr(m, "weight_orig", m.weight)
            if init_type == "normal":
                nn.init.normal_(weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(weight, gain=gain)
            elif init_type == "uniform":
                nn.init.uniform_(weight, -gain, gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(weight, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)

    net.apply(init_module)
    return net
