"""Config arithmetic OmegaConf lacks: `${mul:a,b}` for a weight defined relative to another.

CycleGAN's identity weight is a fraction of the cycle weight in its code (lambda_identity = 0.5,
multiplied by lambda_A), so a sweep over `loss.weights.cycle` must move it too. Registered when
`src` is imported, i.e. before any entry point or test composes a config.
"""
from omegaconf import OmegaConf


def multiply(*factors: float) -> float:
    product = 1.0
    for factor in factors:
        product *= float(factor)
    return product


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", multiply)
