from src.losses.adversarial import GAN_MODES, AdversarialLoss, gradient_penalty
from src.losses.feature_matching import feature_matching_loss

__all__ = ["GAN_MODES", "AdversarialLoss", "gradient_penalty", "feature_matching_loss"]
