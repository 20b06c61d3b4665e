from src.losses.adversarial import GAN_MODES, AdversarialLoss, gradient_penalty, input_gradient
from src.losses.feature_matching import feature_matching_loss

__all__ = ["GAN_MODES", "AdversarialLoss", "gradient_penalty", "input_gradient", "feature_matching_loss"]
