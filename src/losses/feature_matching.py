"""pix2pixHD feature matching: L1 between the discriminator's features of real and fake."""
import torch
import torch.nn.functional as F


def feature_matching_loss(fake_features, real_features) -> torch.Tensor:
    """Mean L1 over every layer (and every scale) of the discriminator.

    Takes the feature lists a discriminator returns with `return_features=True`: one list of
    tensors (a PatchGAN) or a list of such lists (multi-scale). Real features are targets only.
    """
    if fake_features and isinstance(fake_features[0], torch.Tensor):
        fake_features, real_features = [fake_features], [real_features]
    terms = [F.l1_loss(f, r.detach()) for fs, rs in zip(fake_features, real_features) for f, r in zip(fs, rs)]
    return torch.stack(terms).mean()
