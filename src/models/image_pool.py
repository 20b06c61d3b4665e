"""Image history buffer (Shrivastava et al. 2017), used by CycleGAN's discriminators."""
import logging

import torch

log = logging.getLogger(__name__)


class ImagePool:
    """Holds up to `size` earlier fakes; `query` returns a batch mixing new and stored fakes.

    Per image: while the pool is filling, store it and return it; afterwards, with probability
    0.5 return a random stored image and store the new one in its place, else return the new one.
    Randomness comes from torch's global RNG so that a seeded, resumed run draws the same.
    The buffer is part of the checkpoint (`state_dict`), so resuming continues the same history.
    It holds float32 whatever the precision the fakes were made in (bf16/fp16 under autocast):
    a resume may change `trainer.precision`, and the discriminator casts its input anyway.
    """

    def __init__(self, size: int):
        if size < 0:
            raise ValueError("model.pool_size must be >= 0")
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        if self.size == 0:
            return images
        images = images.float()
        out = []
        for image in images:
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(()).item() > 0.5:
                idx = int(torch.randint(0, self.size, ()).item())
                out.append(self.images[idx].to(image.device))  # restored pools load on CPU
                self.images[idx] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def to_cpu(self) -> None:
        """Keep the stored fakes on the CPU (a fit that ends: its pools held GPU memory as long as
        the model lived); the next query takes them back to the fakes' device."""
        self.images = [image.cpu() for image in self.images]

    def state_dict(self) -> dict:
        return {"size": self.size, "images": [img.cpu() for img in self.images]}

    def load_state_dict(self, state: dict) -> None:
        """The saved history. A resume with another `model.pool_size` keeps the configured size
        (the first of the saved images that fit), and says so."""
        if state["size"] != self.size:
            log.warning("model.pool_size=%d, but the checkpoint's image pool held up to %d images: the resumed run "
                        "keeps %d (of the %d saved)", self.size, state["size"], self.size, len(state["images"]))
        self.images = [image.float() for image in state["images"][:self.size]]   # a file of an earlier version
