"""CAM heatmaps drawn over images, for the sample grids of the attention models."""
import torch
import torch.nn.functional as F


def overlay_heatmap(images: torch.Tensor, heatmap: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend a per-image min-max-normalised heatmap (red = high attention) over images in [-1, 1].

    `heatmap` is [N, 1, h, w] at any resolution; it is resized to the images' size.
    """
    heat = F.interpolate(heatmap.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
    flat = heat.flatten(1)
    low, high = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    heat = (heat - low) / (high - low).clamp_min(1e-8)
    colour = torch.cat([heat, torch.zeros_like(heat), 1 - heat], 1) * 2 - 1  # blue (low) -> red (high)
    rgb = images[:, :3] if images.size(1) == 3 else images[:, :1].expand(-1, 3, -1, -1)
    return (1 - alpha) * rgb + alpha * colour
