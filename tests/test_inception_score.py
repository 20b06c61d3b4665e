"""The Inception Score of generated samples: torchmetrics' formula on a classifier's logits,
reproducible whatever the training RNG, its splits capped for small sample sets, and the
download-free stand-in classifier fixed across processes."""
import math

import pytest
import torch

from src.metrics.features import build_feature_extractor
from src.metrics.inception_score import InceptionScorer


def score(logits: torch.Tensor, splits: int, batches: int = 1) -> dict:
    scorer = InceptionScorer(logits.size(1), splits=splits)
    for part in logits.chunk(batches):
        scorer.update(part)
    return scorer.compute()


def test_the_score_is_the_exponentiated_kl_of_the_predictions_from_their_marginal():
    confident = torch.eye(4).repeat(5, 1) * 50   # 20 samples, each sure of its class, the 4 classes balanced
    assert score(confident, splits=1)["is"] == pytest.approx(4.0, rel=1e-6)
    assert score(confident[:1].repeat(20, 1), splits=1)["is"] == pytest.approx(1.0, abs=1e-6)   # one class only
    logits = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    p = logits.double().softmax(1)
    expected = math.exp(float((p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean()))
    single = score(logits, splits=1)
    assert single["is"] == pytest.approx(expected, rel=1e-9) and single["is_std"] == 0.0
    # Batching does not change it.
    assert score(logits, splits=1, batches=4)["is"] == pytest.approx(expected, rel=1e-9)


def test_a_class_no_sample_gives_any_probability_leaves_the_score_finite():
    """A class 1000 below the others in every sample's logits has a softmax of exactly 0 in
    float64: it adds nothing to the KL divergence, so the score is the one without that class."""
    logits = torch.randn(40, 6, generator=torch.Generator().manual_seed(3)).double()
    with_dead_class = torch.cat([logits, torch.full((40, 1), -1000.0, dtype=torch.float64)], 1)
    assert with_dead_class.softmax(1)[:, -1].eq(0).all()
    for splits in (1, 4):
        assert score(with_dead_class, splits)["is"] == pytest.approx(score(logits, splits)["is"], rel=1e-12)


def test_the_split_shuffle_is_seeded_and_splits_are_capped():
    logits = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    first = score(logits, splits=10)
    torch.manual_seed(6)
    state = torch.get_rng_state()
    second = score(logits, splits=10)
    assert first == second and first["is_std"] > 0
    assert torch.equal(torch.get_rng_state(), state)   # the training RNG is left as it was
    # 6 samples: 3 parts of 2, not 10 parts (some empty, some of one sample).
    scorer = InceptionScorer(6, splits=10)
    scorer.update(logits[:6])
    assert math.isfinite(scorer.compute()["is_std"]) and scorer.metric.splits == 3
    with pytest.raises(RuntimeError, match="at least 2 generated images"):
        score(logits[:1], splits=10)
    with pytest.raises(ValueError, match="inception_score_splits=0"):
        InceptionScorer(6, splits=0)


def test_parts_differ_by_at_most_one_sample_and_the_std_is_over_the_parts_as_torch_fidelity():
    """torch-fidelity's split (part i: samples i*N//splits up to (i+1)*N//splits of the seeded
    shuffle) and its np.std over the parts: 19 samples make 6 parts of 3 or 4."""
    logits = torch.randn(19, 6, generator=torch.Generator().manual_seed(2)).double()
    shuffled = logits[torch.randperm(19, generator=torch.Generator().manual_seed(0))]
    parts = []
    for i in range(6):
        p = shuffled[i * 19 // 6:(i + 1) * 19 // 6].softmax(1)
        parts.append(math.exp(float((p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean())))
    mean = sum(parts) / 6
    result = score(logits, splits=6)
    assert result["is"] == pytest.approx(mean, rel=1e-9)
    assert result["is_std"] == pytest.approx(math.sqrt(sum((s - mean) ** 2 for s in parts) / 6), rel=1e-9)


def test_the_download_free_classifier_is_fixed_and_gives_ten_logits():
    first, second = (build_feature_extractor("random_cnn") for _ in range(2))
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    assert first.logits(first(images)).shape == (3, 10) and first.num_classes == 10
    assert torch.equal(first.logits(first(images)), second.logits(second(images)))
    assert build_feature_extractor("random_cnn").num_features == 480   # the FID features are unchanged


def test_the_scorer_derives_the_score_from_the_fid_features_in_one_pass():
    """FidKidScorer's Inception Score reads the logits of the features FID already computed:
    the extractor runs once per image, and the score is the one of those logits."""
    from src.metrics.fid_kid import FidKidScorer
    extractor = build_feature_extractor("random_cnn")
    calls = []
    extractor.register_forward_hook(lambda module, args, output: calls.append(len(output)))
    scorer = FidKidScorer(extractor, kid_subset_size=8, inception_score_splits=2)
    images = torch.rand(8, 3, 32, 32) * 2 - 1
    scorer.update(real=images.flip(0), fake=images)
    assert calls == [8, 8]   # one pass for the reals, one for the fakes
    scores = scorer.compute()
    with torch.no_grad():
        expected = score(extractor.logits(extractor(images).double()), splits=2)
    assert scores["is"] == pytest.approx(expected["is"], rel=1e-9) and scores["is_std"] == expected["is_std"]
    plain = FidKidScorer(extractor, kid_subset_size=8)   # translators: no Inception Score
    plain.update(real=images.flip(0), fake=images)
    assert "is" not in plain.compute()


def shapes_split(datamodule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = datamodule.dataset(split, train=False)
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([item["A"] for item in items]), torch.tensor([item["label"] for item in items])


def test_a_classifier_of_the_data_tells_shapes_from_blobs_and_classes_apart(tmp_path):
    """Trained on 2000 labelled shapes (under a forked RNG: training's draws are untouched), the
    classifier is right on the real test shapes; its Inception Score ranks the real shapes above
    blurred ones (what a generator that has the colours but not the shapes makes), and a
    conditional model's samples are scored against the classes they were drawn for."""
    from src.data.shapes import ShapesLabelledDataModule
    from src.metrics.image_classifier import ClassifierScorer, train_image_classifier

    datamodule = ShapesLabelledDataModule(data_dir=tmp_path / "shapes", n_train=1000, n_test=40, batch_size=8)
    train_images, train_labels = shapes_split(datamodule, "train")
    test_images, test_labels = shapes_split(datamodule, "test")
    state = torch.get_rng_state()
    net = train_image_classifier(train_images, train_labels, num_classes=2)
    assert torch.equal(torch.get_rng_state(), state)

    blobs = torch.nn.functional.avg_pool2d(test_images, 9, stride=1, padding=4)   # same colours, no edges
    scores = {}
    for name, fakes, drawn_for in (("shapes", test_images, test_labels), ("blobs", blobs, test_labels),
                                   ("swapped", test_images, 1 - test_labels)):
        scorer = ClassifierScorer(net, num_classes=2, splits=1, conditional=True)
        scorer.update_real(test_images, test_labels)
        scorer.update_fake(fakes, drawn_for)
        scores[name] = scorer.compute()
    assert scores["shapes"]["cls_acc_real"] >= 0.9
    assert scores["shapes"]["cls_is"] == pytest.approx(scores["shapes"]["cls_is_real"])
    assert 1.0 <= scores["blobs"]["cls_is"] < scores["shapes"]["cls_is"] - 0.2
    assert scores["shapes"]["cls_acc_fake"] >= 0.9 and scores["swapped"]["cls_acc_fake"] <= 0.1
    unconditional = ClassifierScorer(net, num_classes=2)
    unconditional.update_real(test_images, test_labels)
    unconditional.update_fake(test_images, test_labels)   # labels of an unconditional model's batch: ignored
    assert "cls_acc_fake" not in unconditional.compute()
    with pytest.raises(ValueError, match="at least 2 classes"):
        train_image_classifier(train_images, torch.zeros_like(train_labels), num_classes=1)


def test_the_classifier_of_the_data_keeps_one_full_size_image_at_a_time():
    """It reads up to 10,000 training images: kept at full size until all were read, 256 px
    images took 8 GB. Each is brought to the classifier's size as it is read and dropped."""
    import weakref
    from types import SimpleNamespace
    from src.metrics.image_classifier import MAX_SIDE, classifier_of_the_data

    alive, most_alive = weakref.WeakSet(), [0]

    class FullSizeImages(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, index):
            image = torch.rand(3, 2 * MAX_SIDE, 2 * MAX_SIDE) * 2 - 1
            alive.add(image)
            most_alive[0] = max(most_alive[0], len(alive))
            return {"A": image, "label": index % 2}

    datamodule = SimpleNamespace(num_classes=2, input_nc=3, name="full_size", class_names=["a", "b"],
                                 dataset=lambda split, train: FullSizeImages())
    scorer = classifier_of_the_data(datamodule, max_images=12, epochs=1)
    assert scorer is not None and most_alive[0] <= 2


def test_a_classifier_record_without_its_settings_is_trained_anew(caplog):
    """A record whose settings are missing (or not a mapping) reads as one of other settings."""
    from types import SimpleNamespace
    from src.metrics.image_classifier import classifier_of_the_data

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, index):
            return {"A": torch.rand(3, 8, 8) * 2 - 1, "label": index % 2}

    datamodule = SimpleNamespace(num_classes=2, input_nc=3, name="eight", class_names=["a", "b"],
                                 dataset=lambda split, train: Images())
    with caplog.at_level("WARNING"):
        scorer = classifier_of_the_data(datamodule, max_images=8, epochs=1, recorded={"settings": None})
    assert scorer is not None and scorer.settings["classes"] == ["a", "b"]
    assert "trained under other settings (data None -> 'eight'" in caplog.text


def test_a_classifier_trained_for_no_epoch_is_refused_by_its_key():
    """0 epochs left the network at its random initialisation, which then scored the samples."""
    from types import SimpleNamespace
    from src.metrics.image_classifier import classifier_of_the_data

    datamodule = SimpleNamespace(num_classes=2, input_nc=3, dataset=lambda split, train: pytest.fail("read"))
    with pytest.raises(ValueError, match=r"^classifier_epochs=0 must be a positive integer"):
        classifier_of_the_data(datamodule, max_images=12, epochs=0)
    with pytest.raises(ValueError, match=r"^callbacks.fid_kid.classifier_epochs=-1 must be a positive integer"):
        classifier_of_the_data(datamodule, max_images=12, epochs=-1, key="callbacks.fid_kid.classifier_max_images")


def test_the_classifier_of_the_data_trains_on_a_set_that_leaves_a_batch_of_one():
    """65 images of 8 px in batches of 64: the last batch, one image, reaches the third batch
    norm as a 1x1 map of one value per channel, which torch refuses to normalise (the FID
    callback's setup stopped the run there)."""
    from src.metrics.image_classifier import train_image_classifier
    images, labels = torch.rand(65, 3, 8, 8) * 2 - 1, torch.arange(65) % 2
    net = train_image_classifier(images, labels, num_classes=2, epochs=1)
    assert net(images[:4]).shape == (4, 2)
