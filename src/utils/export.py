"""Export one translation direction as a single ONNX or TorchScript graph, checked against PyTorch.

`TranslationGraph` wraps the networks a translation runs through (`translation_nets`: the
generator, and NICE-GAN's source encoder before it) into one module computing
`translation_forward`, in eval mode: running statistics, no dropout, spectral norm with its
stored singular vectors. (pix2pix samples with test-time batch statistics and dropout: its graph
normalises each image by its own statistics, as pix2pix samples one image at a time, and has
no dropout, which is random.)

ONNX goes through torch's TorchScript-based exporter (`dynamo=False`): it needs only the `onnx`
package, works offline, and exports batch, height and width as dynamic axes for these nets.
Every export is checked: the exported graph must reproduce PyTorch's output on the example and
on a second input of another batch size and spatial size (to prove the dynamic axes); when the
second check fails the graph is exported again at the example's fixed size, and the report says
so.
"""
from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.models.base import TranslationModel
from src.models.size_check import check_translation_size, input_channels, size_multiple
from src.utils.config_checks import require_int
from src.utils.directions import trained_domains
from src.utils.translation import check_direction, round_up
from src.utils.whole_files import remove_stale_temporaries, staged, write_text_whole

log = logging.getLogger(__name__)

EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-3  # max abs difference on outputs in [-1, 1] (float32 reorderings stay below 1e-5)
ONNX_OPSET = 17
#: a temporary export untouched this long was left by a killed export (a running one writes it in minutes)
STALE_EXPORT_SECONDS = 3600


class TranslationGraph(nn.Module):
    """forward(x) = model.translation_forward(x, direction), owning only that direction's nets."""

    def __init__(self, model: TranslationModel, direction: str):
        super().__init__()
        check_direction(model, direction)
        self.direction = direction
        self.nets = nn.ModuleList(model.translation_nets(direction))
        # Kept outside the module tree: the export must hold the translation's nets, not the
        # discriminators and the other direction. The nets above are the same objects the
        # model's forward uses, so tracing finds their parameters.
        self.__dict__["_model"] = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._model.translation_forward(x, self.direction)


def export_path(output_dir: str | Path, direction: str, fmt: str) -> Path:
    return Path(output_dir) / f"generator_{direction}{EXPORT_FORMATS[fmt]}"


def example_input(model: TranslationModel, direction: str, size: int, batch: int = 1) -> torch.Tensor:
    """A random input of `size` rounded up to what the translation allows, on the CPU."""
    side = round_up(size, size_multiple(model, direction))
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, input_channels(model, direction), side, side, generator=generator) * 2 - 1


@contextlib.contextmanager
def batch_statistics_of_each_image(nets: nn.ModuleList):
    """Batch norm by each image's own statistics, as pix2pix samples (one image at a time, in
    batch-statistics mode: src/models/base.py's sampling_mode): that is instance norm with the
    layer's own scale and shift, which a graph can hold. Its running buffers are not read."""
    norms = list({id(m): m for net in nets for m in net.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm)}.values())   # a layer shared by two nets: once
    before = [vars(norm).get("forward") for norm in norms]   # a forward of its own, set by another wrapper
    for norm in norms:
        norm.forward = lambda x, norm=norm: F.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=norm.eps)
    try:
        yield
    finally:
        for norm, forward in zip(norms, before):
            if forward is None:
                del norm.forward
            else:
                norm.forward = forward


def check_export_size(model: TranslationModel, direction: str, size: int) -> None:
    """ValueError naming export_size where the translation cannot run at it (a full-mode U-GAT-IT
    built for another size); translate.py checks it before translating a folder, not after."""
    require_int("export_size", size, why=" (px: the side of the example the graph is traced and checked at)")
    side = round_up(size, size_multiple(model, direction))
    # In the graph's own mode: an image's own statistics refuse sizes running ones take (a 1x1 map).
    with (batch_statistics_of_each_image(nn.ModuleList(model.translation_nets(direction)))
          if model.sampling_options().get("batch_stats") else contextlib.nullcontext()):
        check_translation_size(model, direction, side, side, what=f"export_size={size}",
                               fix="set export_size to one of them")


def second_input(example: torch.Tensor, multiple: int) -> torch.Tensor:
    """Another batch size and a non-square spatial size: what a fixed-shape graph would reject."""
    n, c, h, w = example.shape
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(n + 1, c, h + multiple, w + 2 * multiple, generator=generator) * 2 - 1
    return x.to(example.device)


def max_difference(a: torch.Tensor | np.ndarray, b: torch.Tensor) -> float:
    a = torch.as_tensor(a).float().cpu()
    b = b.float().cpu()
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max())


# -- runners for the exported files -------------------------------------------------------------


def _torchscript_runner(path: Path):
    module = torch.jit.load(str(path), map_location="cpu")
    return lambda x: module(x.cpu())


def _onnx_runner(path: Path):
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.detach().cpu().numpy()})[0]


# -- writers ------------------------------------------------------------------------------------


def _write_torchscript(graph: TranslationGraph, example: torch.Tensor, path: Path, dynamic: bool) -> None:
    # Tracing records the ops of one run; sizes read with x.shape stay symbolic, which the
    # second-input check confirms. `dynamic` is accepted for symmetry: a trace has no fixed axes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer notices; the parity check decides
        traced = torch.jit.trace(graph, example, check_trace=False)
    traced.save(str(path))


def _write_onnx(graph: TranslationGraph, example: torch.Tensor, path: Path, dynamic: bool) -> None:
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": axes, "output": axes} if dynamic else None)


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript}
_RUNNERS = {"onnx": _onnx_runner, "torchscript": _torchscript_runner}


def check_export_format(fmt: str) -> None:
    """translate.py checks it before translating a folder, not after."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export={fmt!r} must be one of {', '.join(EXPORT_FORMATS)} (or null)")


def export_translation(model: TranslationModel, direction: str, fmt: str, output_dir: str | Path,
                       size: int = 256, tolerance: float = TOLERANCE) -> dict:
    """Write `output_dir/generator_<direction>.onnx|.pt` and check it against PyTorch.

    Returns a report: path, format, dynamic (batch and spatial axes free), checked (False only
    when onnxruntime is missing), max_difference. Raises when the graph does not match PyTorch
    even at the example's size.
    """
    check_export_format(fmt)
    graph = TranslationGraph(model, direction)
    was_training = [net.training for net in graph.nets]
    device = next(graph.nets.parameters()).device
    # Traced and checked on the CPU, where the runners run the exported graph: on a GPU, cuDNN's
    # TF32 convolutions (torch's default) would move the reference by ~1e-3, past the tolerance,
    # and a trace would record the CUDA device into the TorchScript graph.
    batch_stats = bool(model.sampling_options().get("batch_stats"))
    try:
        graph.cpu().eval()
        path = export_path(output_dir, direction, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        check_export_size(model, direction, size)
        example = example_input(model, direction, size)
        other = second_input(example, size_multiple(model, direction))
        with torch.no_grad(), (batch_statistics_of_each_image(graph.nets) if batch_stats else contextlib.nullcontext()):
            expected = graph(example)
            try:
                expected_other = graph(other)
            except (RuntimeError, ValueError):  # the nets take one size only (full-mode MLPs)
                expected_other = None
            # Written and checked under a temporary name, then renamed over the path: a graph that
            # fails its check never replaces an earlier export, nor stays to be used.
            remove_stale_temporaries(path.parent, path.name, STALE_EXPORT_SECONDS)   # of killed exports
            with staged(path) as temporary:
                report = _export_and_check(graph, fmt, path, temporary, example, expected, other, expected_other,
                                           tolerance)
    finally:
        graph.to(device)
        for net, mode in zip(graph.nets, was_training):
            net.train(mode)
    # The graph normalises each image by its own statistics where the model samples so; test-time
    # dropout, random, it cannot: without it, its translations differ from translate.py's.
    if sampling := [name for name, on in model.sampling_options().items() if on and name != "batch_stats"]:
        log.warning("%s samples with test-time %s (%s), which the exported graph does not (no dropout), so its "
                    "translations differ from translate.py's", type(model).__name__, " and ".join(sampling),
                    " ".join(f"model.test_time_{name}=true" for name in sampling))   # (each option's setting)
    report["matches_translate"] = not sampling
    write_export_card(model, direction, fmt, report, sampling, output_channels=expected.shape[1])
    log.info("Exported %s %s to %s: %s", type(model).__name__, direction, path, report)
    return report


def export_card_path(path: str | Path) -> Path:
    return Path(f"{path}.json")


def write_export_card(model: TranslationModel, direction: str, fmt: str, report: dict, sampling: list[str],
                      output_channels: int) -> None:
    """`<export>.json` beside the graph: what it takes and gives, which translate.py does outside
    it (pads to the size multiple, maps files to [-1, 1]), and how it was checked. Without it a
    graph fed [0, 1] or BGR images, or a side that is not a multiple, gives wrong images without
    an error."""
    # A run trained with data.direction=BtoA calls the dataset's B its A: say which folder it reads.
    source, target = trained_domains(model, direction)
    channels = input_channels(model, direction)
    card = {
        "model": type(model).__name__, "direction": direction, "format": fmt,
        "translates": f"the dataset's domain {source} into {target}",
        "opset": ONNX_OPSET if fmt == "onnx" else None, "torch": torch.__version__,
        "weights": getattr(model, "loaded_weights", None), "iteration": getattr(model, "loaded_iteration", None),
        "input": {"layout": "NCHW", "dtype": "float32", "channels": channels,
                  "colour_order": "RGB" if channels == 3 else "grey", "range": [-1.0, 1.0],
                  "from_uint8": "x / 127.5 - 1",
                  "sides": (f"any multiple of {size_multiple(model, direction)} px (translate.py pads others by "
                            "reflection and crops the output back)" + ("" if report["checked"] else
                                                                        "; unchecked: onnxruntime was missing"))
                  if report["dynamic"] else
                  f"{report['input_shape'][-2]}x{report['input_shape'][-1]} px only, batch {report['input_shape'][0]}"},
        "output": {"layout": "NCHW", "channels": output_channels,
                   "range": [-1.0, 1.0], "to_uint8": "round((clamp(y, -1, 1) + 1) * 127.5)"},
        "matches_translate": report["matches_translate"],
        "differs_from_translate_by": [f"test-time {name}" for name in sampling],
        "check": {key: report[key] for key in ("checked", "dynamic", "max_difference", "input_shape")},
    }
    write_text_whole(export_card_path(report["path"]), json.dumps(card, indent=2) + "\n")


def _export_and_check(graph, fmt, path, staged, example, expected, other, expected_other, tolerance) -> dict:
    """Export to `staged` and check it; `path`, where it will be, names it in the report and messages."""
    report = {"path": str(path), "format": fmt, "input_shape": list(example.shape)}
    for dynamic in (True, False) if expected_other is not None else (False,):
        _WRITERS[fmt](graph, example, staged, dynamic)
        run = _RUNNERS[fmt](staged)
        if run is None:
            log.warning("onnxruntime is not installed: %s was written but not checked against PyTorch", path)
            return {**report, "dynamic": dynamic, "checked": False, "max_difference": None}
        difference = max_difference(run(example), expected)
        if difference > tolerance:
            raise RuntimeError(f"{path}: exported {fmt} graph differs from PyTorch by {difference:.2e} "
                               f"(tolerance {tolerance:.0e})")
        if not dynamic:
            log.warning("%s: exported at the fixed input shape %s (the nets or the exported graph take "
                        "no other shape)", path, list(example.shape))
            return {**report, "dynamic": False, "checked": True, "max_difference": difference}
        try:
            other_difference = max_difference(run(other), expected_other)
        except Exception as error:  # a fixed-shape graph fails in the runtime's own ways
            log.info("%s: dynamic shapes failed (%s); exporting at a fixed size", path, error)
            continue
        if other_difference <= tolerance:
            return {**report, "dynamic": True, "checked": True,
                    "max_difference": max(difference, other_difference)}
    raise AssertionError("unreachable: the fixed-size export returns or raises")
