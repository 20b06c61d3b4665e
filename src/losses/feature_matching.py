"""pix2pixHD feature matching: L1 between the discriminator's features of real and fake."""
import torch
import torch.nn.functional as F

#: pix2pixHD weighs each layer by 4 / (number of feature layers): with its 3-layer PatchGAN's
#: four feature layers, the per-scale term is the sum over layers.
LAYER_WEIGHT_NUMERATOR = 4.0


def feature_matching_loss(fake_features, real_features) -> torch.Tensor:
    """pix2pixHD's feature-matching term (before its weight `loss.weights.feature_matching`):
    per scale, the L1 distances of every feature layer, each weighted 4 / (number of layers),
    summed; averaged over the scales.

    Takes the feature lists a discriminator returns with `return_features=True`: one list of
    tensors (a PatchGAN) or a list of such lists (multi-scale). Real features are targets only.
    """
    if fake_features and isinstance(fake_features[0], torch.Tensor):
        fake_features, real_features = [fake_features], [real_features]
    per_scale = [sum(F.l1_loss(f, r.detach()) for f, r in zip(fs, rs)) * (LAYER_WEIGHT_NUMERATOR / len(fs))
                 for fs, rs in zip(fake_features, real_features)]
    return torch.stack(per_scale).mean()
