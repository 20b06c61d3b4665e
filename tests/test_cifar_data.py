"""CIFAR-10: the binary release's records become PNG class folders at download time (the
archive faked here: nothing is downloaded), which the labelled DataModule and the noise models
read."""
import shutil
import tarfile
from pathlib import Path

import hydra
import numpy as np
import pytest
from PIL import Image

import src.data.download as download_module
from src.data.cifar import CLASS_FOLDERS, RECORD_BYTES, SPLIT_FILES, read_cifar_records
from test_mnist_data import downloaded_data

PER_FILE = {"train": 4, "test": 10}   # 5 x 4 training images, every class in the test split


def records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10's binary format: a label byte, then the red, green and blue planes."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([labels[:, None].astype(np.uint8), planes], axis=1).tobytes()


@pytest.fixture
def fake_release(tmp_path, monkeypatch) -> dict:
    """cifar-10-binary.tar.gz of random images on a fake server; download's fetch copies it."""
    folder = tmp_path / "server" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, files in SPLIT_FILES.items():
        parts = []
        for k, name in enumerate(files):
            images = rng.integers(0, 256, (PER_FILE[split], 32, 32, 3), dtype=np.uint8)
            labels = (np.arange(PER_FILE[split]) + k * PER_FILE[split]) % 10   # every class in each split
            (folder / name).write_bytes(records(images, labels))
            parts.append((images, labels))
        arrays[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    (folder / "batches.meta.txt").write_text("\n".join(name.split("_", 1)[1] for name in CLASS_FOLDERS))
    archive = tmp_path / "server" / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tarred:
        tarred.add(folder, arcname=folder.name)
    fetched = []

    def fake_fetch(url: str, destination: Path, md5: str | None) -> None:
        fetched.append((url, md5))
        shutil.copy(archive, destination)

    monkeypatch.setattr(download_module, "fetch", fake_fetch)
    return {"arrays": arrays, "fetched": fetched}


def test_download_writes_class_folders_with_every_pixel(fake_release, tmp_path):
    target = download_module.download("cifar10", tmp_path / "data")
    assert fake_release["fetched"] == [("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                                        download_module.DATASETS["cifar10"].md5)]
    assert sorted(p.name for p in target.iterdir()) == ["test", "train"]   # the release's files are gone
    for split, (images, labels) in fake_release["arrays"].items():
        assert sorted(p.name for p in (target / split).iterdir()) == CLASS_FOLDERS
        width = len(str(len(images) - 1))
        for i, (image, label) in enumerate(zip(images, labels)):
            path = target / split / CLASS_FOLDERS[label] / f"{i:0{width}d}.png"
            assert np.array_equal(np.asarray(Image.open(path)), image), path


def test_cifar10_config_trains_a_noise_model_on_it(fake_release, tmp_path, train_cfg):
    cfg, datamodule = downloaded_data(train_cfg, tmp_path / "data", "cifar10", "wgangp")
    assert datamodule.num_classes == 10
    batch = datamodule.sample_batch(3)
    assert batch["A"].shape == (3, 3, 32, 32)
    images, labels = fake_release["arrays"]["test"]
    assert batch["label"].tolist() == labels[:3].tolist()
    image = images[0]   # the first test item (class 0_airplane) is the first record: its pixels in [-1, 1]
    expected = image.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1
    assert np.allclose(batch["A"][0].numpy(), expected, atol=1e-5)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    model.check_batch(batch)


def test_files_that_are_not_the_binary_release_are_named(tmp_path):
    short = tmp_path / "data_batch_1.bin"
    short.write_bytes(b"\x00" * (RECORD_BYTES + 5))
    with pytest.raises(ValueError, match="data_batch_1.bin.*truncated download"):
        read_cifar_records(short)
    hundred = tmp_path / "test_batch.bin"
    hundred.write_bytes(bytes([42]) + b"\x00" * (RECORD_BYTES - 1))
    with pytest.raises(ValueError, match="label 42 .*CIFAR-100"):
        read_cifar_records(hundred)
    with pytest.raises(FileNotFoundError, match="not the binary CIFAR-10 release"):
        download_module.DATASETS["cifar10"].convert(tmp_path, tmp_path / "out")
