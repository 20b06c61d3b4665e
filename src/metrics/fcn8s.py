"""The FCN-8s of the pix2pix paper's FCN-score, from its Caffe weights, as a segmenter file.

pix2pix and CycleGAN score labels->photo with an FCN-8s (Long et al.) trained on Cityscapes, run
in Caffe by junyanz's scripts/eval_cityscapes. This rebuilds that net layer for layer from its
deploy.prototxt (VGG-16 body with 100 px padding at conv1_1, Caffe's ceil-mode pooling, fc6/fc7
as 7x7 and 1x1 convolutions, 20 outputs, the 2x/2x/8x learned upsampling with the prototxt's crop
offsets 5, 9 and 31), copies the weights out of the .caffemodel, puts the reference's input
preprocessing in front (RGB in [0, 1] -> BGR on 0-255, minus the Cityscapes mean) and saves the
whole as a program eval.py's `segmenter_path` loads (src/metrics/segmenter.py):

    python -m src.metrics.fcn8s --caffemodel weights/fcn-8s-cityscapes.caffemodel \\
        --output weights/fcn8s_cityscapes.pt2 --size 1024 2048
    python src/eval.py ckpt_path=... segmenter_path=weights/fcn8s_cityscapes.pt2 'segmenter_size=[1024,2048]'

A missing .caffemodel is downloaded first from the pix2pix authors' address (about 540 MB).
The .caffemodel is read with protobuf (no Caffe needed), declaring just the messages and fields
that hold the weights (caffe.proto's NetParameter.layer, LayerParameter.name/blobs, BlobProto);
protobuf skips every other field. The net's 20th output (index 19) is no Cityscapes class: a
pixel predicted as it counts as a miss, as in no class.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from src.data.download import pasteable_override
from src.utils.whole_files import write_whole

log = logging.getLogger(__name__)

CAFFEMODEL_URL = ("http://people.eecs.berkeley.edu/~tinghuiz/projects/pix2pix/fcn-8s-cityscapes/"
                  "fcn-8s-cityscapes.caffemodel")
#: the reference's preprocessing: the Cityscapes mean, in BGR order on the 0-255 scale
BGR_MEAN = (72.78044, 83.21195, 73.45286)
VGG_WIDTHS = (64, 128, 256, 512, 512)
VGG_DEPTHS = (2, 2, 3, 3, 3)


# -- the net ---------------------------------------------------------------------------------


def crop_like(x: torch.Tensor, reference: torch.Tensor, offset: int) -> torch.Tensor:
    """Caffe's Crop layer with axis 2: x's spatial window of reference's size at (offset, offset)."""
    height, width = reference.shape[-2:]
    return x[..., offset:offset + height, offset:offset + width]


class FCN8s(nn.Module):
    """FCN-8s as in the pix2pix Cityscapes deploy.prototxt; layer names are the Caffe layers'
    (conv1_1 ... fc7_cs, score_fr, upscore2, score_pool4, upscore_pool4, score_pool3, upscore8).
    `widths` and `fc_width` make small copies for tests; the defaults are the real net."""

    def __init__(self, num_outputs: int = 20, widths: tuple[int, ...] = VGG_WIDTHS, fc_width: int = 4096):
        super().__init__()
        self.stages = nn.ModuleList()
        in_channels = 3
        for stage, (width, depth) in enumerate(zip(widths, VGG_DEPTHS), start=1):
            layers = nn.ModuleDict()
            for k in range(1, depth + 1):
                # conv1_1's 100 px padding lets any input size survive the 32x downsampling and
                # the 7x7 fc6; the crops below cut the result back to the input's pixels.
                layers[f"conv{stage}_{k}"] = nn.Conv2d(in_channels, width, 3, padding=100 if stage == k == 1 else 1)
                in_channels = width
            self.stages.append(layers)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)   # Caffe rounds pooled sizes up
        self.fc6_cs = nn.Conv2d(in_channels, fc_width, 7)
        self.fc7_cs = nn.Conv2d(fc_width, fc_width, 1)
        self.score_fr = nn.Conv2d(fc_width, num_outputs, 1)
        self.upscore2 = nn.ConvTranspose2d(num_outputs, num_outputs, 4, stride=2, bias=False)
        self.score_pool4 = nn.Conv2d(widths[3], num_outputs, 1)
        self.upscore_pool4 = nn.ConvTranspose2d(num_outputs, num_outputs, 4, stride=2, bias=False)
        self.score_pool3 = nn.Conv2d(widths[2], num_outputs, 1)
        self.upscore8 = nn.ConvTranspose2d(num_outputs, num_outputs, 16, stride=8, bias=False)

    def caffe_layers(self) -> dict[str, nn.Module]:
        """Caffe layer name -> the module holding its weights."""
        layers = {name: conv for stage in self.stages for name, conv in stage.items()}
        layers.update({name: getattr(self, name) for name in ("fc6_cs", "fc7_cs", "score_fr", "upscore2", "score_pool4",
                                                               "upscore_pool4", "score_pool3", "upscore8")})
        return layers

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        x, pooled = data, []
        for stage in self.stages:
            for conv in stage.values():
                x = torch.relu(conv(x))
            x = self.pool(x)
            pooled.append(x)
        x = torch.relu(self.fc7_cs(torch.relu(self.fc6_cs(x))))
        upscore2 = self.upscore2(self.score_fr(x))
        fuse_pool4 = upscore2 + crop_like(self.score_pool4(pooled[3]), upscore2, 5)
        upscore_pool4 = self.upscore_pool4(fuse_pool4)
        fuse_pool3 = upscore_pool4 + crop_like(self.score_pool3(pooled[2]), upscore_pool4, 9)
        return crop_like(self.upscore8(fuse_pool3), data, 31)


class CaffeInput(nn.Module):
    """The reference's preprocessing in front of a net: RGB in [0, 1] -> BGR on 0-255 minus the
    mean, the segmenter file's input convention on one side and the Caffe net's on the other."""

    def __init__(self, net: nn.Module, bgr_mean=BGR_MEAN):
        super().__init__()
        self.net = net
        self.register_buffer("bgr_mean", torch.tensor(bgr_mean, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.net(rgb.flip(1) * 255.0 - self.bgr_mean)


# -- the .caffemodel -----------------------------------------------------------------------------


def _caffe_messages() -> dict[str, type]:
    """Message classes for the part of caffe.proto (proto2, package caffe) that holds weights:
    field numbers and packing as there, every other field left out (protobuf skips unknown
    fields; it reads repeated numbers packed or not, and writes them packed as Caffe does)."""
    fields = descriptor_pb2.FieldDescriptorProto
    schema = {
        "BlobShape": [("dim", 1, fields.TYPE_INT64, fields.LABEL_REPEATED, None)],
        "BlobProto": [("num", 1, fields.TYPE_INT32, fields.LABEL_OPTIONAL, None),
                      ("channels", 2, fields.TYPE_INT32, fields.LABEL_OPTIONAL, None),
                      ("height", 3, fields.TYPE_INT32, fields.LABEL_OPTIONAL, None),
                      ("width", 4, fields.TYPE_INT32, fields.LABEL_OPTIONAL, None),
                      ("data", 5, fields.TYPE_FLOAT, fields.LABEL_REPEATED, None),
                      ("shape", 7, fields.TYPE_MESSAGE, fields.LABEL_OPTIONAL, ".caffe.BlobShape"),
                      ("double_data", 8, fields.TYPE_DOUBLE, fields.LABEL_REPEATED, None)],
        "LayerParameter": [("name", 1, fields.TYPE_STRING, fields.LABEL_OPTIONAL, None),
                           ("type", 2, fields.TYPE_STRING, fields.LABEL_OPTIONAL, None),
                           ("blobs", 7, fields.TYPE_MESSAGE, fields.LABEL_REPEATED, ".caffe.BlobProto")],
        "NetParameter": [("name", 1, fields.TYPE_STRING, fields.LABEL_OPTIONAL, None),
                         ("layers", 2, fields.TYPE_BYTES, fields.LABEL_REPEATED, None),   # V1: only detected
                         ("layer", 100, fields.TYPE_MESSAGE, fields.LABEL_REPEATED, ".caffe.LayerParameter")],
    }
    file = descriptor_pb2.FileDescriptorProto(name="caffe_weights.proto", package="caffe", syntax="proto2")
    for message, entries in schema.items():
        proto = file.message_type.add(name=message)
        for name, number, kind, label, type_name in entries:
            field = proto.field.add(name=name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
            if label == fields.LABEL_REPEATED and kind in (fields.TYPE_INT64, fields.TYPE_FLOAT, fields.TYPE_DOUBLE):
                field.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}")) for name in schema}


CAFFE = _caffe_messages()


def blob_array(blob) -> np.ndarray:
    shape = tuple(blob.shape.dim) if blob.HasField("shape") else (blob.num, blob.channels, blob.height, blob.width)
    values = blob.data if len(blob.data) else blob.double_data
    array = np.asarray(values, dtype=np.float32)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"a blob of shape {shape} holds {array.size} values")
    return array.reshape(shape)


def read_caffemodel(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Layer name -> its weight blobs (weights, then bias) of a binary .caffemodel."""
    net = CAFFE["NetParameter"]()
    try:
        net.ParseFromString(Path(path).read_bytes())
    except Exception as error:   # protobuf's DecodeError, for a file of another kind or cut short
        raise ValueError(f"{path} is not a Caffe .caffemodel (binary NetParameter): {error}") from error
    if not len(net.layer):
        hint = (" It is in Caffe's old V1 layout: convert it with Caffe's upgrade_net_proto_binary first."
                if len(net.layers) else "")
        raise ValueError(f"{path} holds no layers.{hint}")
    return {layer.name: [blob_array(blob) for blob in layer.blobs] for layer in net.layer if len(layer.blobs)}


def load_caffe_weights(net: FCN8s, blobs: dict[str, list[np.ndarray]], source: str | Path) -> None:
    """Copy each Caffe layer's weight (and bias) into `net`; every layer must be there, with
    the shapes of the net (Caffe's convolution and deconvolution layouts are PyTorch's)."""
    for name, module in net.caffe_layers().items():
        if name not in blobs:
            raise ValueError(f"{source} has no weights for layer {name}: not the pix2pix Cityscapes FCN-8s "
                             f"(its layers: {', '.join(blobs) or 'none'})")
        parameters = [module.weight] + ([module.bias] if module.bias is not None else [])
        if len(blobs[name]) != len(parameters):
            raise ValueError(f"{source}: layer {name} has {len(blobs[name])} blobs, the FCN-8s layer "
                             f"{len(parameters)}")
        for parameter, array in zip(parameters, blobs[name]):
            if parameter.dim() == 1 and array.shape[-1:] == tuple(parameter.shape) and array.size == parameter.numel():
                array = array.reshape(parameter.shape)   # a bias in the old 4D blob layout: (1, 1, 1, C)
            if tuple(array.shape) != tuple(parameter.shape):
                raise ValueError(f"{source}: layer {name} has a blob of shape {tuple(array.shape)}, the FCN-8s "
                                 f"expects {tuple(parameter.shape)}")
            with torch.no_grad():
                parameter.copy_(torch.from_numpy(array))


def fcn8s_from_caffemodel(caffemodel: str | Path, **net_settings) -> FCN8s:
    """The FCN-8s with the .caffemodel's weights; ValueError where the file is not its weights."""
    net = FCN8s(**net_settings)
    load_caffe_weights(net, read_caffemodel(caffemodel), caffemodel)
    return net


def segmenter_from_caffemodel(caffemodel: str | Path, output: str | Path, size: tuple[int, int],
                              **net_settings) -> Path:
    """The FCN-8s with the .caffemodel's weights and the reference's preprocessing, saved by
    torch.export for (1, 3, *size) inputs at `output`."""
    return export_segmenter(fcn8s_from_caffemodel(caffemodel, **net_settings), output, size)


def export_segmenter(net: FCN8s, output: str | Path, size: tuple[int, int]) -> Path:
    """`net` with the reference's preprocessing, saved by torch.export for (1, 3, *size) inputs
    at `output`."""
    segmenter = CaffeInput(net).eval()
    with torch.no_grad():
        program = torch.export.export(segmenter, (torch.rand(1, 3, *size),))
    output = Path(output)
    write_whole(output, lambda stream: torch.export.save(program, stream))   # eval trusts a file it finds
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.metrics.fcn8s", description=__doc__.split("\n\n")[0])
    parser.add_argument("--caffemodel", type=Path, required=True,
                        help="fcn-8s-cityscapes.caffemodel (downloaded there first when missing)")
    parser.add_argument("--output", type=Path, required=True, help="the segmenter file to write (.pt2)")
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("HEIGHT", "WIDTH"),
                        help="the input size it is exported for: eval's segmenter_size (default: Cityscapes' "
                             "1024 2048, as the reference)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    downloaded = not args.caffemodel.is_file()
    if downloaded:
        from src.data.download import DownloadError, fetch   # the datasets' downloader
        log.info("Downloading %s to %s", CAFFEMODEL_URL, args.caffemodel)
        try:
            fetch(CAFFEMODEL_URL, args.caffemodel)
        except DownloadError as error:
            print(error, file=sys.stderr)
            return 1
    try:
        net = fcn8s_from_caffemodel(args.caffemodel)   # (the export after it raises its own errors)
    except ValueError as error:
        if not downloaded:
            raise
        # Not the weights (no checksum is published; a proxy's page answered, say): kept, it
        # would fail every later run, which takes a file it finds as the download.
        args.caffemodel.unlink()
        print(f"{error}\nThe download from {CAFFEMODEL_URL} was not the FCN-8s weights and is removed: run the "
              "command again, or download the file by hand and pass it with --caffemodel.", file=sys.stderr)
        return 1
    output = export_segmenter(net, args.output, tuple(args.size))
    log.info("Wrote %s: %s 'segmenter_size=[%d,%d]'", output, pasteable_override("segmenter_path", output, prefix=""),
             *args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
