"""The pix2pix Cityscapes FCN-8s rebuilt from its deploy.prototxt, its weights read from a
.caffemodel, and the segmenter file made of them; on small copies of the net (the real one has
134M parameters) and .caffemodel files written here with the same messages."""
from pathlib import Path

import numpy as np
import pytest
import torch

from src.metrics.fcn8s import (BGR_MEAN, CAFFE, CaffeInput, FCN8s, crop_like, load_caffe_weights, read_caffemodel,
                               segmenter_from_caffemodel)
from src.metrics.segmenter import Segmenter

SMALL = dict(num_outputs=5, widths=(4, 4, 6, 6, 6), fc_width=8)


def write_caffemodel(path: Path, net: FCN8s, old_bias_layout: bool = True, skip: str | None = None,
                     wrong_shape: str | None = None) -> dict[str, list[np.ndarray]]:
    """A binary NetParameter holding random weights of `net`'s layers (biases in the old 4D
    num/channels/height/width fields when `old_bias_layout`), plus a weightless ReLU layer;
    returns the arrays written."""
    rng = np.random.default_rng(0)
    message = CAFFE["NetParameter"](name="small-fcn8s")
    message.layer.add(name="relu1_1", type="ReLU")
    written = {}
    for name, module in net.caffe_layers().items():
        if name == skip:
            continue
        layer = message.layer.add(name=name, type="Convolution")
        arrays = [rng.standard_normal(tuple(p.shape)).astype(np.float32)
                  for p in ([module.weight] + ([module.bias] if module.bias is not None else []))]
        written[name] = arrays
        for k, array in enumerate(arrays):
            blob = layer.blobs.add()
            shape = array.shape + (1,) if name == wrong_shape and k == 0 else array.shape
            if k == 1 and old_bias_layout:
                blob.num, blob.channels, blob.height, blob.width = 1, 1, 1, array.size
            else:
                blob.shape.dim.extend(shape)
            blob.data.extend(array.ravel().tolist())
    path.write_bytes(message.SerializeToString())
    return written


@pytest.mark.parametrize("size", [(64, 64), (50, 70), (33, 97)])
def test_fcn8s_scores_every_input_pixel_whatever_the_size(size):
    """conv1_1's 100 px padding and the crops (5, 9, 31) bring the scores back to the input's
    size, as the deploy.prototxt's final Crop to the data does."""
    net = FCN8s(**SMALL).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, *size)).shape == (1, 5, *size)


def test_crop_takes_the_window_at_the_offset_like_caffes_crop_layer():
    x = torch.arange(100.0).view(1, 1, 10, 10)
    window = crop_like(x, torch.zeros(1, 1, 3, 4), 2)
    assert window.shape == (1, 1, 3, 4) and window[0, 0, 0, 0] == 22 and window[0, 0, -1, -1] == 45


def test_caffe_input_feeds_bgr_on_0_255_minus_the_mean():
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    fed = CaffeInput(torch.nn.Identity())(rgb)
    expected = torch.tensor([0.0 - BGR_MEAN[0], 127.5 - BGR_MEAN[1], 255.0 - BGR_MEAN[2]])
    assert torch.allclose(fed.view(3), expected)


def test_weights_come_out_of_the_caffemodel_into_their_layers(tmp_path):
    net = FCN8s(**SMALL)
    written = write_caffemodel(tmp_path / "small.caffemodel", net)
    blobs = read_caffemodel(tmp_path / "small.caffemodel")
    assert "relu1_1" not in blobs and set(blobs) == set(net.caffe_layers())
    load_caffe_weights(net, blobs, "small.caffemodel")
    for name, module in net.caffe_layers().items():
        assert np.array_equal(module.weight.detach().numpy(), written[name][0]), name
        if module.bias is not None:
            assert np.array_equal(module.bias.detach().numpy(), written[name][1]), name
    assert net.upscore8.bias is None and len(written["upscore8"]) == 1   # Caffe's bias_term: false


def test_a_caffemodel_that_is_not_the_fcn8s_is_named_with_the_layer(tmp_path):
    net = FCN8s(**SMALL)
    write_caffemodel(tmp_path / "missing.caffemodel", net, skip="score_pool3")
    with pytest.raises(ValueError, match="missing.caffemodel has no weights for layer score_pool3"):
        load_caffe_weights(net, read_caffemodel(tmp_path / "missing.caffemodel"), tmp_path / "missing.caffemodel")
    write_caffemodel(tmp_path / "shape.caffemodel", net, wrong_shape="fc7_cs")
    with pytest.raises(ValueError, match=r"layer fc7_cs has a blob of shape \(8, 8, 1, 1, 1\), the FCN-8s expects "
                                         r"\(8, 8, 1, 1\)"):
        load_caffe_weights(net, read_caffemodel(tmp_path / "shape.caffemodel"), tmp_path / "shape.caffemodel")
    (tmp_path / "text.caffemodel").write_bytes(b"not a caffemodel")
    with pytest.raises(ValueError, match="text.caffemodel is not a Caffe .caffemodel"):
        read_caffemodel(tmp_path / "text.caffemodel")
    old = CAFFE["NetParameter"](name="v1")
    old.layers.append(b"")
    (tmp_path / "v1.caffemodel").write_bytes(old.SerializeToString())
    with pytest.raises(ValueError, match="old V1 layout: convert it with Caffe's upgrade_net_proto_binary"):
        read_caffemodel(tmp_path / "v1.caffemodel")


def test_the_segmenter_file_segments_like_the_net_with_its_preprocessing(tmp_path):
    """The exported file, loaded as eval loads segmenter_path, gives the classes of the net with
    the Caffe weights and preprocessing; the net's extra output (beyond the palette's classes)
    stays a possible prediction, which the scores count as a miss."""
    net = FCN8s(**SMALL)
    write_caffemodel(tmp_path / "small.caffemodel", net)
    path = segmenter_from_caffemodel(tmp_path / "small.caffemodel", tmp_path / "out" / "fcn.pt2", (40, 48), **SMALL)
    load_caffe_weights(net, read_caffemodel(tmp_path / "small.caffemodel"), "small")
    images = torch.rand(2, 3, 40, 48) * 2 - 1
    with torch.no_grad():
        expected = CaffeInput(net).eval()((images + 1) / 2).argmax(1)
    classes = Segmenter(path, 4, None, "cpu", key="segmenter_path").classes(images, (40, 48))
    assert torch.equal(classes, expected)


def test_a_download_that_is_not_the_caffemodel_is_removed_not_kept(tmp_path, monkeypatch, capsys):
    """No checksum is published for the weights: a page answering in their place (a proxy's
    login) is found when it is read, and removed, where a later run would take the file it finds
    as the download and fail on it for good. A file the user gave is theirs: left as it is."""
    import src.data.download as download
    from src.metrics import fcn8s

    monkeypatch.setattr(download, "fetch", lambda url, path: Path(path).write_text("<html>Sign in</html>"))
    caffemodel = tmp_path / "fcn-8s-cityscapes.caffemodel"
    assert fcn8s.main(["--caffemodel", str(caffemodel), "--output", str(tmp_path / "s.pt2"), "--size", "32", "32"]) == 1
    assert "was not the FCN-8s weights and is removed" in capsys.readouterr().err and not caffemodel.exists()
    caffemodel.write_text("<html>mine</html>")
    with pytest.raises(ValueError, match="is not a Caffe .caffemodel"):
        fcn8s.main(["--caffemodel", str(caffemodel), "--output", str(tmp_path / "s.pt2"), "--size", "32", "32"])
    assert caffemodel.exists()

    def offline(url, path):
        raise download.DownloadError(f"Downloading {url} failed: no network.")

    monkeypatch.setattr(download, "fetch", offline)
    caffemodel.unlink()
    assert fcn8s.main(["--caffemodel", str(caffemodel), "--output", str(tmp_path / "s.pt2")]) == 1
    assert "failed: no network." in capsys.readouterr().err
    # A download that reads as the weights stays, whatever fails after it (the export here)
    monkeypatch.setattr(download, "fetch", lambda url, path: Path(path).write_text("weights"))
    monkeypatch.setattr(fcn8s, "fcn8s_from_caffemodel", lambda path: "the net")

    def export_fails(net, output, size):
        raise ValueError("the export failed")

    monkeypatch.setattr(fcn8s, "export_segmenter", export_fails)
    with pytest.raises(ValueError, match="the export failed"):
        fcn8s.main(["--caffemodel", str(caffemodel), "--output", str(tmp_path / "s.pt2")])
    assert caffemodel.read_text() == "weights"
