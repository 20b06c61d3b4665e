"""The semantic segmentation net of the FCN-score: an exported program (`torch.export.save`)
given by file, so any net trained on the labels can score generated photos without its code.

The pix2pix paper scores labels->photo with an FCN-8s trained on Cityscapes (Caffe weights;
junyanz's scripts/eval_cityscapes). Whatever net is used, its file takes a float (1, 3, H, W)
RGB image in [0, 1] and returns (1, C, h, w) class scores, channel k for the palette's class k
(channels beyond its classes are predictions of no class, scored as misses), or a dict holding
them under "out", as torchvision's segmentation models do; any other preprocessing (BGR, mean subtraction) is the
exported module's job, so the file alone says how the net is fed. Export it at the size it is
run at (`segmenter_size`, or the label maps' size), batch 1:

    program = torch.export.export(net.eval(), (torch.rand(1, 3, 1024, 2048),))
    torch.export.save(program, "segmenter.pt2")

A file from elsewhere is loaded without running code of its author's: torch.export.load
unpickles tensors stored in pickle form with `weights_only=False`, and Python or TorchScript
objects among the constants in full, so its tensor loads are forced weights-only and a file
holding such objects (no segmentation net needs one) is refused. Its program is text that
loading turns into code in three more places, each refused unless it holds what a fixed-size
export of ATen operations holds: symbolic sizes (`expr_str`, parsed by sympy's `sympify`, an
`eval`), shape guards (`guards_code`, `exec`uted to build the module) and node targets (any
callable under `torch`, `math` or `operator`, called by the first forward).
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.export.pt2_archive import constants as pt2_archive

from src.utils.accelerator import is_out_of_memory
from src.utils.environment import weights_only_loads
from src.utils.whole_files import whole_zip_archive


def loaded_without_code(constant: str) -> bool:
    """Whether torch.export.load reads the file `constant` of an archive's constants folder as
    tensors or configuration only. An allowlist: torch unpickles its object constants in full
    (custom_obj_*: TorchScript objects; opaque_obj_*: plain pickle, added in a later release
    than the first), and a kind a later torch adds is refused until it is known here."""
    return (constant.startswith(pt2_archive.TENSOR_CONSTANT_FILENAME_PREFIX)   # tensor loads: forced weights-only
            or constant.endswith("_constants_config.json")
            or ("/" not in constant and constant.endswith(".pt")))   # the legacy format: a tensor file


def refuse_authors_code(path: Path, key: str) -> None:
    if not whole_zip_archive(path):   # (a read the system refuses is raised, as it is)
        return   # torch.export.load's own error says what the file is not
    with zipfile.ZipFile(path) as archive:
        # torch picks a constant's loader by its path inside data/constants/ (which may hold folders)
        objects = [name for name in archive.namelist()
                   if (constant := name.partition(pt2_archive.CONSTANTS_DIR)[2]) and not loaded_without_code(constant)]
        if objects:
            raise ValueError(f"{key}={path} holds pickled Python or TorchScript objects ({', '.join(objects)}), "
                             "which loading would run: export a net of tensors and torch operations only")
        refuse_code_in_programs(archive, path, key)


#: the calls a segmentation net's exported graph makes: ATen operators, and the item access that
#: takes an operator's tuple output apart
SAFE_NODE_TARGET = re.compile(r"(torch\.ops\.aten\.\w+(\.\w+)?|_operator\.getitem)")


def code_in_program(document) -> str | None:
    """What in an exported program's JSON loading would run as code (see the module's doc), or
    None. Walked without recursion: a file's nesting is its author's choice."""
    if isinstance(document, dict) and document.get("guards_code"):
        return f"shape guards ({str(document['guards_code'])[:80]!r})"
    pending = [document]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if "expr_str" in item:
                return f"a symbolic size ({item['expr_str']!r})"
            target = item.get("target")
            if "inputs" in item and "outputs" in item and isinstance(target, str) and not SAFE_NODE_TARGET.fullmatch(target):
                return f"a call of {target!r}"
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return None


def refuse_code_in_programs(archive: zipfile.ZipFile, path: Path, key: str) -> None:
    for name in archive.namelist():
        if name.endswith(".json"):
            try:
                document = json.loads(archive.read(name))
            except RecursionError:   # nested beyond what a parser (torch's own too) reads
                raise ValueError(f"{key}={path}: {name} is nested too deeply to be a program's") from None
            except ValueError:
                continue   # torch.export.load's own error says what the file is not
            if (found := code_in_program(document)) is not None:
                raise ValueError(f"{key}={path} holds {found} in {name}, which loading would run as code: export "
                                 "a net of ATen operations at a fixed size (src/metrics/segmenter.py shows how)")


class Segmenter:
    """Classes of images by an exported segmentation net, one image at a time (exports are
    usually made for batch 1, and the reference runs the FCN on one frame at a time)."""

    def __init__(self, path: str | Path, num_classes: int, size: tuple[int, int] | None, device, key: str):
        # (`~` expanded here, where the file is opened, for every caller: a quoted or config-file
        # value reaches the settings as typed)
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{key}={path}: no such file (a segmentation net saved by torch.export.save)")
        refuse_authors_code(path, key)
        try:
            with weights_only_loads():
                program = torch.export.load(str(path))
            module = program.module()
        except Exception as error:   # a zip of another kind, a pickle, a truncated file
            raise ValueError(f"{key}={path} is not a program saved by torch.export.save ({error}); "
                             "export the net as src/metrics/segmenter.py shows") from error
        self.module = module.to(device)   # outside: a device's own error is not the file's
        self.path, self.num_classes, self.size, self.key = path, num_classes, size, key

    def to(self, device) -> "Segmenter":
        self.module = self.module.to(device)
        return self

    @torch.no_grad()
    def classes(self, images: torch.Tensor, label_size: tuple[int, int]) -> torch.Tensor:
        """(N, H, W) classes at `label_size` of (N, 3, h, w) images in [-1, 1]: each image resized
        (bilinear, as the reference resizes its generated image to the label's size) to the net's
        size, segmented, and its class scores resized to the label maps' size before the argmax."""
        size = tuple(self.size) if self.size is not None else label_size
        maps = []
        for image in images:
            image = (image.unsqueeze(0).float() + 1) / 2
            if tuple(image.shape[-2:]) != size:
                image = F.interpolate(image, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
            try:
                scores = self.module(image)
            except Exception as error:   # an export made for another size or batch
                if is_out_of_memory(error):   # the device's, not the export's: said as it is
                    raise
                raise ValueError(f"{self.key}={self.path} cannot segment a {tuple(image.shape)} image: {error}. "
                                 f"Export it for that shape, or set {self.key.removesuffix('path')}size to the size it "
                                 "was exported for") from error
            if isinstance(scores, dict) and "out" in scores:
                scores = scores["out"]
            if not (isinstance(scores, torch.Tensor) and scores.dim() == 4 and scores.size(1) >= self.num_classes):
                shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
                raise ValueError(f"{self.key}={self.path} returned {shape}; it must return (1, C, h, w) class "
                                 f"scores, channel k for class k of the label palette's {self.num_classes} (channels "
                                 "beyond them, such as a background class, are predictions of no class)")
            if tuple(scores.shape[-2:]) != tuple(label_size):
                scores = F.interpolate(scores.float(), size=label_size, mode="bilinear", align_corners=False)
            maps.append(scores.argmax(1))
        return torch.cat(maps)
