"""Labelled single-domain data for noise-to-image GANs: layouts, labels, errors, the training
loader's batches per iteration and its resume position, the labelled shapes dataset."""

import os
import shlex
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

from src.data.epoch_order import SeededItems  # noqa: E402
from src.data.errors import DatasetNotFoundError, EmptyDatasetError  # noqa: E402
from src.data.labelled import LabelledImageDataModule  # noqa: E402
from src.data.shapes import ShapesLabelledDataModule  # noqa: E402

CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"


def write_png(path: Path, seed: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_classes(root: Path, train: dict[str, int], test: dict[str, int]) -> Path:
    """root/<split>/<class>/<class><k>.png, distinct noise per file."""
    seed = 0
    for split, counts in (("train", train), ("test", test)):
        for name, count in counts.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for k in range(count):
                seed += 1
                write_png(root / split / name / f"{name}{k}.png", seed)
    return root


def make_domains(root: Path, n_a: int, n_b: int, n_test: int = 2) -> Path:
    for split, counts in (("train", (n_a, n_b)), ("test", (n_test, n_test))):
        for domain, count in zip("AB", counts):
            for k in range(count):
                write_png(root / f"{split}{domain}" / f"{k}.png", seed=len(split) * 100 + ord(domain) * 10 + k)
    return root


def labelled(root: Path, **kwargs) -> LabelledImageDataModule:
    settings = dict(name="mine", preprocess="resize_and_crop", load_size=8, crop_size=8, flip=False)
    settings.update(kwargs)
    return LabelledImageDataModule(data_dir=root, **settings)


def folder_class(path: str) -> str:
    return Path(path).parent.name


# -- layouts, items, labels ------------------------------------------------------------------


def test_class_folders_items_and_batches(tmp_path):
    # created in reverse name order: the labels follow the sorted names, not the disk order
    root = make_classes(tmp_path / "d", {"zebra": 3, "ant": 2}, {"zebra": 1, "ant": 2})
    dm = labelled(root, batch_size=2)
    assert dm.class_names == ["ant", "zebra"] and dm.num_classes == 2  # lazily, before setup
    dm.setup("fit")
    item = dm.dataset("train")[0]
    assert set(item) == {"A", "label", "A_path", "index"} and isinstance(item["label"], int)
    assert [dm.dataset("test", train=False)[i]["index"] for i in range(3)] == [0, 1, 2]
    assert item["A"].shape == (3, 8, 8) and item["A"].min() >= -1 and item["A"].max() <= 1
    train = dm.dataset("train", train=False)
    assert [folder_class(train[i]["A_path"]) for i in range(len(train))] == ["ant", "zebra", "ant", "zebra", "zebra"]
    for i in range(len(train)):  # every label is its folder's index
        assert dm.class_names[train[i]["label"]] == folder_class(train[i]["A_path"])
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"A", "label", "A_path", "index"}
    assert batch["A"].shape == (2, 3, 8, 8) and batch["label"].dtype == torch.int64 and batch["label"].shape == (2,)
    test_labels = torch.cat([b["label"] for b in dm.test_dataloader()]).tolist()
    assert sorted(test_labels) == [0, 0, 1]
    assert dm.sample_batch(2)["label"].tolist() == [0, 1]  # the first items show every class


def test_given_classes_set_the_order_and_may_be_a_subset(tmp_path):
    root = make_classes(tmp_path / "d", {"ant": 2, "bee": 2, "cat": 1}, {"ant": 1, "bee": 1})
    dm = labelled(root, classes=["bee", "ant"])
    dm.setup("fit")  # the test split lacks "cat", which is not asked for
    data = dm.dataset("train")
    assert dm.class_names == ["bee", "ant"]
    assert {(folder_class(data[i]["A_path"]), data[i]["label"]) for i in range(len(data))} == {("bee", 0), ("ant", 1)}
    # A wrong name is named as one, with the classes there are (a known dataset's message told
    # the user to move it away and download it again)
    with pytest.raises(DatasetNotFoundError, match=r"data.classes: 'cow' is not a class of .*d/train \(those are "
                                                   r"ant, bee, cat\): fix the name, or \+\+data.classes=null for all"):
        labelled(root, classes=["ant", "cow"]).setup("fit")
    with pytest.raises(DatasetNotFoundError, match=r"data.classes: 'cow' is not a class"):
        labelled(root, classes=["ant", "cow"], name="cifar10").setup("fit")


def test_domains_layout_labels_a_0_and_b_1(tmp_path):
    root = make_domains(tmp_path / "d", n_a=3, n_b=2)
    dm = labelled(root, layout="domains", batch_size=5)
    dm.setup("fit")
    assert dm.class_names == ["A", "B"] and dm.num_classes == 2
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch["label"].tolist()) == [0, 0, 0, 1, 1]
    for path, label in zip(batch["A_path"], batch["label"].tolist()):
        assert folder_class(path) == ("trainA", "trainB")[label]
    only_b = labelled(root, layout="domains", classes=["B"])
    only_b.setup("fit")
    data = only_b.dataset("train")
    assert len(data) == 2 and {data[i]["label"] for i in range(2)} == {0}
    assert all(folder_class(data[i]["A_path"]) == "trainB" for i in range(2))
    with pytest.raises(DatasetNotFoundError, match=r"data.classes: 'b' is not a class of .*d's train<X> folders "
                                                   r"\(those are A, B\)"):
        labelled(root, layout="domains", classes=["b"]).setup("fit")


def test_cached_decoding_reads_each_file_once_and_gives_the_same_batches(tmp_path, monkeypatch):
    """data.cache_decoded: a file is decoded on its first read only, the items are those of an
    uncached dataset (the random steps still run per access), and a step that changed its
    image in place would not change the cached one."""
    from src.data import unpaired
    root = make_classes(tmp_path / "d", {"ant": 3, "bee": 2}, {"ant": 1, "bee": 1})
    decodes = []
    original = unpaired.load_image
    monkeypatch.setattr(unpaired, "load_image", lambda path, *a, **k: decodes.append(path) or original(path, *a, **k))
    plain, cached = labelled(root, flip=True), labelled(root, flip=True, cache_decoded=True)
    for dm in (plain, cached):
        dm.setup("fit")
    items = [[SeededItems(dm.dataset("train", train=True))[i, seed] for dm in (plain, cached)]
             for seed in (1, 2) for i in range(5)]
    assert all(torch.equal(a["A"], b["A"]) for a, b in items)
    assert len(decodes) == 2 * 5 + 5   # uncached: each access; cached: each file once
    cache = cached.dataset("train", train=True).decoded
    image = cache.get((str(root / "train" / "ant" / "ant0.png"), 3), lambda: None)
    image[:] = 0
    assert cache.get((str(root / "train" / "ant" / "ant0.png"), 3), lambda: None).any()
    with pytest.raises(ValueError, match=r"data.cache_decoded='yes' must be true or false"):
        labelled(root, cache_decoded="yes")


def test_max_dataset_size_caps_each_class(tmp_path):
    root = make_classes(tmp_path / "d", {"ant": 4, "bee": 1}, {"ant": 1, "bee": 1})
    dm = labelled(root, max_dataset_size=2)
    dm.setup("fit")
    assert sorted(dm.dataset("train")[i]["label"] for i in range(3)) == [0, 0, 1]
    assert len(dm.dataset("train")) == 3


# -- errors ----------------------------------------------------------------------------------


def test_test_split_missing_a_class_folder_is_named(tmp_path):
    root = make_classes(tmp_path / "d", {"ant": 1, "bee": 1}, {"ant": 1})
    with pytest.raises(DatasetNotFoundError, match=r"test/bee"):
        labelled(root).setup("fit")
    with pytest.raises(DatasetNotFoundError, match=r"test/bee"):
        labelled(root).setup("test")


def test_empty_class_and_missing_folders_are_named(tmp_path):
    root = make_classes(tmp_path / "d", {"ant": 1, "bee": 0}, {"ant": 1, "bee": 1})
    with pytest.raises(EmptyDatasetError, match=r"train/bee"):
        labelled(root).setup("fit")
    with pytest.raises(DatasetNotFoundError, match=r"nowhere.*train/<class>"):
        labelled(tmp_path / "nowhere").setup("fit")
    (tmp_path / "flat" / "train").mkdir(parents=True)
    write_png(tmp_path / "flat" / "train" / "0.png", 1)  # images, but no class folder
    with pytest.raises(DatasetNotFoundError, match="no class folder"):
        labelled(tmp_path / "flat").setup("fit")
    with pytest.raises(DatasetNotFoundError, match="trainA"):
        labelled(tmp_path / "flat", layout="domains").setup("fit")


def test_bad_settings_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"data\.layout='folders'.*classes, domains"):
        labelled(tmp_path, layout="folders")
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match=r"data\.batches_per_iteration"):
            labelled(tmp_path, batches_per_iteration=bad)
    for bad in ([], ["a", "a"], "ab", [""]):
        with pytest.raises(ValueError, match=r"data\.classes"):
            labelled(tmp_path, classes=bad)
    assert labelled(tmp_path, classes=OmegaConf.create([0, 1])).classes == ["0", "1"]  # YAML ints
    assert not any(tmp_path.iterdir())  # construction looks at no folder


# -- batches per iteration ---------------------------------------------------------------------


def test_batches_per_iteration_multiplies_the_training_batch_and_drops_the_rest(tmp_path):
    root = make_classes(tmp_path / "d", {"ant": 5, "bee": 4}, {"ant": 2, "bee": 1})
    one = labelled(root, batch_size=2)
    one.setup("fit")
    loader = one.train_dataloader()
    assert loader.batch_size == 2 and loader.drop_last is False
    assert [len(b["label"]) for b in loader] == [2, 2, 2, 2, 1]

    dm = labelled(root, batch_size=2, batches_per_iteration=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert dm.train_batch_size == 4 and loader.batch_size == 4 and loader.drop_last is True
    sizes = [len(b["label"]) for b in loader]
    assert sizes == [4, 4] == [4] * len(loader)  # 9 images: the 9th is left for another epoch
    assert dm.test_dataloader().batch_size == 2 == dm.eval_batch_size


def test_a_train_split_smaller_than_one_iteration_is_refused(tmp_path):
    root = make_classes(tmp_path / "d", {"ant": 5, "bee": 4}, {"ant": 1, "bee": 1})
    dm = labelled(root, batch_size=4, batches_per_iteration=3)
    with pytest.raises(ValueError, match=r"data\.batch_size=4.*data\.batches_per_iteration=3 \(model\.n_critic\)"
                                         r".*train/ant.*holds only 9") as error:
        dm.setup("fit")
    assert str(root / "train" / "bee") in str(error.value)
    dm.setup("test")  # evaluation does not need a full training batch
    labelled(root, batch_size=3, batches_per_iteration=3).setup("fit")  # 9 >= 9


def fake_trainer(epoch: int, batches_done: int) -> SimpleNamespace:
    """What the loader reads of a Trainer: ranks, a broadcast, the fit loop's progress."""
    current = SimpleNamespace(processed=batches_done)
    return SimpleNamespace(
        world_size=1, global_rank=0, current_epoch=epoch,
        strategy=SimpleNamespace(broadcast=lambda value: value),
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=current))))


def paths_and_labels(loader, epoch: int) -> list:
    loader.sampler.set_epoch(epoch)
    return [(b["A_path"], b["label"].tolist()) for b in loader]


def test_resume_position_counts_whole_iterations(tmp_path):
    root = make_classes(tmp_path / "d", {"ant": 7, "bee": 7}, {"ant": 1, "bee": 1})
    dm = labelled(root, batch_size=2, batches_per_iteration=2)
    dm.setup("fit")
    torch.manual_seed(3)
    full = paths_and_labels(dm.train_dataloader(), epoch=1)
    assert len(full) == 3  # 14 images in loader batches of 4

    dm.trainer = fake_trainer(epoch=1, batches_done=1)  # checkpointed after one iteration
    assert dm._training_position() == (1, 4)
    torch.manual_seed(3)
    state = dm.train_dataloader().state_dict()
    assert state["items_done"] == 4 and state["epoch"] == 1

    resumed_dm = labelled(root, batch_size=2, batches_per_iteration=2)
    resumed_dm.setup("fit")
    resumed = resumed_dm.train_dataloader()
    resumed.load_state_dict(state)
    assert paths_and_labels(resumed, epoch=1) == full[1:]


# -- the labelled shapes dataset -----------------------------------------------------------------


def test_shapes_labelled_generates_and_labels_discs_0_triangles_1(tmp_path):
    dm = ShapesLabelledDataModule(data_dir=tmp_path / "s", size=16, n_train=3, n_test=2, batch_size=6)
    assert not (tmp_path / "s").exists()  # generated on first use, not at construction
    assert dm.class_names == ["disc", "triangle"] and dm.num_classes == 2
    dm.setup("fit")
    assert (tmp_path / "s" / "meta.json").exists()
    batch = next(iter(dm.train_dataloader()))
    assert batch["A"].shape == (6, 3, 16, 16) and sorted(batch["label"].tolist()) == [0, 0, 0, 1, 1, 1]
    for path, label in zip(batch["A_path"], batch["label"].tolist()):
        assert folder_class(path) == ("trainA", "trainB")[label]
    assert dm.sample_batch(2)["label"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="data.layout='classes'"):
        ShapesLabelledDataModule(data_dir=tmp_path / "s", layout="classes")


def test_labelled_configs_instantiate_and_share_the_shapes_folder(tmp_path):
    paths = {"data_dir": str(tmp_path / "nowhere")}
    dms = {stem: instantiate(OmegaConf.create({"paths": paths, "data": OmegaConf.load(CONF_DATA / f"{stem}.yaml")}).data)
           for stem in ("shapes", "shapes_labelled", "class_folders")}
    assert dms["shapes_labelled"].data_dir == dms["shapes"].data_dir  # one generation serves both
    assert isinstance(dms["shapes_labelled"], ShapesLabelledDataModule)
    assert dms["shapes_labelled"].batch_size == 64 and dms["shapes_labelled"].batches_per_iteration == 1
    folders = dms["class_folders"]
    assert type(folders) is LabelledImageDataModule and folders.layout == "classes"
    assert folders.data_dir == tmp_path / "nowhere" / "my_dataset"
    assert not (tmp_path / "nowhere").exists()


def test_a_capped_evaluation_keeps_the_test_splits_class_proportions(tmp_path):
    """FID/KID's max_images on unbalanced classes: the first items of the interleaved list would
    be half small class; the capped set keeps the split's 90/10."""
    from src.callbacks.fid_kid import FidKidCallback
    root = make_classes(tmp_path / "d", {"big": 2, "small": 2}, {"big": 45, "small": 5})
    dm = labelled(root, batch_size=2)
    dm.setup("fit")
    test = dm.dataset("test", train=False)
    assert [test[i]["label"] for i in range(4)] == [0, 1, 0, 1]   # interleaved: the small class first-heavy
    picked = dm.evaluation_indices("test", 20)
    assert picked == sorted(picked) and len(set(picked)) == 20
    assert sorted(test.items[i][1] for i in picked) == [0] * 18 + [1] * 2
    _, subset = FidKidCallback(max_images=20).evaluation_dataset(SimpleNamespace(datamodule=dm))
    assert list(subset.indices) == picked
    assert list(FidKidCallback().evaluation_dataset(SimpleNamespace(datamodule=dm))[1].indices) == list(range(50))


def test_class_folders_sort_as_their_composed_names_on_every_machine(tmp_path):
    """A copy from a Mac's older disks names "Égyptienne" decomposed (E + combining accent): by
    raw code points it sorted before "Zèbre" there and after it elsewhere, and the labels moved."""
    import unicodedata
    from src.data.labelled import class_subfolders
    for form, root in (("NFC", tmp_path / "nfc"), ("NFD", tmp_path / "nfd")):
        for name in ("Zèbre", "Égyptienne", "abyssin"):
            (root / unicodedata.normalize(form, name)).mkdir(parents=True)
    composed = [unicodedata.normalize("NFC", n) for n in class_subfolders(tmp_path / "nfc")]
    assert composed == [unicodedata.normalize("NFC", n) for n in class_subfolders(tmp_path / "nfd")]
    # a Mac's zip archive and a NAS's thumbnails are no classes
    for name in ("__MACOSX", "@eaDir", ".ipynb_checkpoints"):
        (tmp_path / "nfc" / name).mkdir()
    assert [unicodedata.normalize("NFC", n) for n in class_subfolders(tmp_path / "nfc")] == composed


def test_a_resume_on_data_whose_classes_mean_other_labels_is_refused(train_cfg):
    from src.utils.run import run_training
    from tests.conftest import NO_EVALUATION
    cfg = train_cfg("model=cgan", "max_iters=1", *NO_EVALUATION)
    run_training(cfg)
    # A named checkpoint (ckpt_path=auto refuses any change of settings first)
    cfg.ckpt_path = str(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    cfg.paths.output_dir = str(Path(cfg.paths.output_dir).parent / "resumed")
    cfg.max_iters, cfg.data.classes = 2, ["B", "A"]
    with pytest.raises(ValueError, match=r"ckpt_path=.*last.ckpt was trained on the classes \['A', 'B'\]"):
        run_training(cfg)
    # Other classes than the trained ones are refused as such, not first for their count (which
    # asked for a model of the data's classes, then for the trained classes, then the count back)
    cfg.data.classes = ["B"]
    with pytest.raises(ValueError, match=r"trained on the classes \['A', 'B'\] .* reads \['B'\]: point data.data_dir"):
        run_training(cfg)
    # Found by auto in its folder, a checkpoint of other classes is another run's, said as such
    cfg.ckpt_path, cfg.paths.output_dir = "auto", str(Path(cfg.paths.output_dir).parent / "run")
    cfg.data.classes = ["B", "A"]
    with pytest.raises(ValueError, match=r"ckpt_path=auto found .*last.ckpt, written by a run with other settings "
                                         r"\(data.classes=None -> \['B', 'A'\]\)"):
        run_training(cfg)


def test_class_folders_under_other_names_are_to_be_named_in_the_trained_order_not_by_the_trained_names():
    """Folders renamed (cat, dog -> Katze, Hund): the trained names are no folders of this data
    (`++data.classes=[cat,dog]` would be refused for a missing class), so the fix asks for this
    data's folders, in the trained order."""
    from src.data.labelled import check_same_classes

    here = SimpleNamespace(class_folders=lambda: ["Hund", "Katze"])
    with pytest.raises(ValueError, match=r"""in the trained classes' order: "\+\+data.classes=\[<folder of cat>,"""
                                         r"""<folder of dog>\]"$"""):
        check_same_classes(["cat", "dog"], here, "ckpt_path=last.ckpt")
    more = SimpleNamespace(class_folders=lambda: ["ant", "cat", "dog"])   # a folder added: the trained names do
    with pytest.raises(ValueError, match=r"""set "\+\+data.classes=\[cat,dog\]" in that order"""):
        check_same_classes(["cat", "dog"], more, "ckpt_path=last.ckpt")


def test_data_whose_classes_mean_other_labels_names_an_override_eval_takes(tmp_path):
    """The fix is written with `++`: eval.py's config has no data node (data: null, the run's), so
    `data.classes=` is refused there, and `++data.classes=` sets it in eval.py and train.py alike.
    It is quoted for the shell: zsh refuses a list's brackets that match no file, and a class
    name with a space would split the override in two."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from src.data.labelled import check_same_classes
    from tests.conftest import compose_train_cfg

    here = SimpleNamespace(class_folders=lambda: ["cats", "big dogs"])
    with pytest.raises(ValueError, match=r"""set "\+\+data.classes=\['big dogs',cats\]" in that order""") as refusal:
        check_same_classes(["big dogs", "cats"], here, "ckpt_path=last.ckpt")
    (override,) = shlex.split(str(refusal.value).split("set ", 1)[1].rpartition(" in that order")[0])
    try:
        with pytest.raises(hydra.errors.ConfigCompositionException):
            compose_train_cfg(["ckpt_path=last.ckpt", override.removeprefix("++")], tmp_path, tmp_path, "eval")
        for config in ("eval", "train"):
            cfg = compose_train_cfg(["ckpt_path=last.ckpt", override], tmp_path, tmp_path, config)
            assert list(cfg.data.classes) == ["big dogs", "cats"]
    finally:
        GlobalHydra.instance().clear()
