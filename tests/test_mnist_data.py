"""MNIST-format datasets: the IDX files become PNG class folders at download time (fetching
faked here: nothing is downloaded), which the labelled DataModule and the noise models read."""
import gzip
import shutil
import struct
from pathlib import Path

import hydra
import numpy as np
import pytest
from PIL import Image

import src.data.download as download_module
from src.data.errors import DatasetNotFoundError
from src.data.mnist import read_idx

COUNTS = {"train": 20, "test": 10}   # every digit in both splits


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mirror(tmp_path, monkeypatch) -> dict:
    """The four MNIST files of random digits on a fake server; download's fetch copies them."""
    server = tmp_path / "server"
    server.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for split, (images_file, labels_file) in (("train", ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")),
                                              ("test", ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))):
        images = rng.integers(0, 256, (COUNTS[split], 28, 28), dtype=np.uint8)
        labels = np.arange(COUNTS[split]) % 10
        write_idx(server / images_file, images)
        write_idx(server / labels_file, labels)
        arrays[split] = (images, labels)
    fetched, checksums = [], []

    def fake_fetch(url: str, destination: Path, md5: str) -> None:
        fetched.append(url)
        checksums.append(md5)
        shutil.copy(server / url.rsplit("/", 1)[-1], destination)

    monkeypatch.setattr(download_module, "fetch", fake_fetch)
    return {"arrays": arrays, "fetched": fetched, "checksums": checksums}


def test_download_writes_class_folders_with_every_pixel(fake_mirror, tmp_path):
    target = download_module.download("mnist", tmp_path / "data")
    assert len(fake_mirror["fetched"]) == 4 and all(u.startswith("https://") for u in fake_mirror["fetched"])
    # each file is checked against its own published checksum
    assert fake_mirror["checksums"] == [download_module.MNIST_MD5[u.rsplit("/", 1)[-1]] for u in fake_mirror["fetched"]]
    assert sorted(p.name for p in target.iterdir()) == ["test", "train"]   # the IDX files are removed
    for split, (images, labels) in fake_mirror["arrays"].items():
        assert sorted(p.name for p in (target / split).iterdir()) == [str(d) for d in range(10)]
        for i, (image, label) in enumerate(zip(images, labels)):
            path = target / split / str(label) / f"{i:0{len(str(COUNTS[split] - 1))}d}.png"
            assert np.array_equal(np.asarray(Image.open(path)), image)


def downloaded_data(train_cfg, root: Path, name: str, model_name: str):
    """(config, set-up DataModule) of `model=<model_name> data=<name>` on the dataset the
    (faked) download writes under `root`, read in-process."""
    download_module.download(name, root)
    cfg = train_cfg(f"model={model_name}", f"data={name}", f"data.data_dir={root / name}", "data.num_workers=0",
                    "data.persistent_workers=false", "data.max_dataset_size=null")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    return cfg, datamodule


def test_mnist_config_trains_the_noise_models_on_it(fake_mirror, tmp_path, train_cfg):
    cfg, datamodule = downloaded_data(train_cfg, tmp_path / "data", "mnist", "dcgan")
    assert datamodule.num_classes == 10
    batch = datamodule.sample_batch(4)
    assert batch["A"].shape == (4, 1, 32, 32) and batch["label"].tolist() == [0, 1, 2, 3]
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    assert model.image_shape == (1, 32, 32)
    model.check_batch(batch)


def test_a_missing_mnist_folder_quotes_the_download_command(tmp_path, train_cfg):
    cfg = train_cfg("model=dcgan", "data=mnist", f"data.data_dir={tmp_path / 'mnist'}")
    with pytest.raises(DatasetNotFoundError, match="python -m src.data.download mnist"):
        hydra.utils.instantiate(cfg.data).setup("fit")


def test_bad_idx_files_are_named(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as stream:
        stream.write(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="bad.gz is not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as stream:
        stream.write(struct.pack(">BBBBI", 0, 0, 0x08, 1, 10) + b"\x00" * 4)
    with pytest.raises(ValueError, match="truncated download"):
        read_idx(short)
