"""The body of `src/eval.py`: translate a test split (or, for a noise-to-image model, sample
images of the reference images' classes when conditional: one per test image, or `num_samples`
against the `real_split` images, the papers' "FID 50k"), score it, write images and metrics."""
import contextlib
import json
import logging
import re
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.data.download import pasteable_setting
from src.data.folders import OutputNames
from src.data.image_io import save_image, save_in_format
from src.data.labelled import check_same_classes, proportional_picks
from src.data.unpaired import distinct_images
from src.metrics.features import build_feature_extractor, data_feature_extractor
from src.metrics.fid_kid import FidKidScorer
from src.metrics.image_classifier import ClassifierScorer, classifier_of_the_data
from src.metrics.mmd import sample_mmd2
from src.metrics.segmenter import Segmenter
from src.metrics.tstr import tstr_trtr
from src.metrics.shapes_truth import (ShapesTruthScorer, background_tensor, is_shapes_dataset, load_test_meta,
                                      test_image_size, truth_unavailable)
from src.models.checkpoint_fit import load_checkpoint_file
from src.models.noise_base import SAMPLES, NoiseToImageModel
from src.utils.accelerator import float64_device, is_out_of_memory
from src.utils.checkpoint_loading import (DATA_CLASSES, check_checkpoint_settings, load_model,
                                         recorded_checkpoint_path, refuse_foreign_targets, run_config_path)
from src.utils.config_checks import (check_argument_types, check_seed, home_expanded, is_int, is_number,
                                     refuse_job_chdir, require_int, require_path)
from src.utils.directions import DIRECTION_KEYS, domain_folders, translated_directions
from src.utils.folder_lock import FolderLock
from src.utils.image_grid import make_grid, to_uint8_images
from src.utils.label_evaluation import label_scores_for, segmenter_for
from src.utils.loader_failures import loader_failure_hint
from src.utils.rng import isolated_rng
from src.utils.run_results import EVAL_RESULT
from src.utils.sequence_plot import plot_series
from src.utils.training_config import CONF_DIR
from src.utils.translation import resolve_device
from src.utils.whole_files import write_text_whole, write_whole

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("fid", "kid_x100", "is", "cls_is", "cls_is_real", "cls_acc_fake", "cls_acc_real", "mmd2", "tstr",
                 "trtr", "iou", "color_error", "l1", "psnr", "ssim", "label_pixel_acc", "label_class_acc",
                 "label_class_iou", "fcn_pixel_acc", "fcn_class_acc", "fcn_class_iou", "real_fcn_pixel_acc",
                 "real_fcn_class_acc", "real_fcn_class_iou")


def data_config(cfg: DictConfig, model) -> DictConfig:
    """`data=NAME` if given, else the data config the checkpoint's run was trained with: from
    the run's Hydra config beside the checkpoint's folder, or, without one (a checkpoint copied
    out of its run), from the checkpoint itself. Keys given under `data` without a `data=NAME`
    (`+data.data_dir=/elsewhere`) override the run's."""
    given = cfg.get("data")
    if given is not None and "_target_" in given:
        return given
    run_config = run_config_path(cfg.ckpt_path)
    if run_config.is_file():
        # Resolve inside the whole run config: the data node interpolates its `paths`. Its root
        # (`$PROJECT_ROOT` or the working directory) resolves as eval.py runs, perhaps from
        # elsewhere: the folder the run read, which the checkpoint records, is taken where it
        # exists (on another machine, the run config's folder under this root).
        run_cfg = OmegaConf.load(run_config)
        read = model.training_data.get("data_dir")
        recorded = {"data_dir": str(read)} if read and Path(read).is_dir() else {}
        saved = OmegaConf.to_container(run_cfg.data, resolve=True)
        refuse_foreign_targets(saved, f"{run_config} (data)", *DATA_CLASSES, "data")
        data = OmegaConf.merge(saved, recorded, given or {})
        for key, value in data_keys_added_since(run_config, data).items():
            resolved = value_among(data, key, value)
            fix = (pasteable_setting(f"data.{key}", resolved) if resolved is not UNRESOLVED
                   else f"++data.{key}=<the value {value} gives>")
            log.info("data.%s=%s is in the data config now, not in the run's (older) one, so it is off here: "
                     "%s to use it", key, value, fix)
    else:
        data = OmegaConf.merge(checkpoints_data_config(cfg.ckpt_path, model, run_config), given or {})
    if data.get("max_dataset_size") is not None:
        log.info("data.max_dataset_size=%s: evaluating on the first %s test images of each domain "
                 "(++data.max_dataset_size=null for all of them)", data.max_dataset_size, data.max_dataset_size)
    return data


def checkpoints_data_config(ckpt_path, model, run_config: Path) -> dict:
    """The data config a checkpoint records (its DataModule's class and settings), for one
    away from its run's folder."""
    target = model.training_data_class
    if target is None or not model.training_data:
        raise ValueError(f"No data config: pass data=NAME (e.g. data=shapes); {run_config} does not exist to say "
                         f"which data the checkpoint was trained on, and ckpt_path={ckpt_path} is older than the "
                         f"record of it in checkpoints")
    recorded = {"_target_": target, **model.training_data}   # the class, and the settings it is built with
    refuse_foreign_targets(recorded, f"ckpt_path={ckpt_path} (data=NAME for other data)", *DATA_CLASSES,
                           "datamodule_hyper_parameters")
    log.info("data: the settings recorded in %s (%s; no run config at %s); data=NAME for other data, "
             "+data.KEY=VALUE to change one", ckpt_path, target, run_config)
    return recorded


#: value_among's answer for a value that does not resolve among the run's data settings
UNRESOLVED = object()


def value_among(data: DictConfig, key: str, value):
    """`value` as it resolves as `data.<key>` (`${.size}`: the run's size): an interpolation pasted
    as written fails the command it is pasted into. UNRESOLVED where it names what the data node
    alone does not hold (`${paths.data_dir}`)."""
    try:
        return OmegaConf.to_container(OmegaConf.merge(data, {key: value}), resolve=True)[key]
    except OmegaConfBaseException:
        return UNRESOLVED


def data_keys_added_since(run_config: Path, data: DictConfig) -> dict:
    """Keys that the run's data config (`conf/data/<name>.yaml`, by the run's recorded choice)
    has now and `data`, the run's as saved, lacks: settings added since the run, which keep
    their constructor defaults unless given (cityscapes' label_palette turns on its label scores)."""
    hydra_file = run_config.parent / "hydra.yaml"
    if not hydra_file.is_file():
        return {}
    choice = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.choices.data", default=None)
    current = CONF_DIR / "data" / f"{choice}.yaml"
    # A plain option name: the run folder's file may come from elsewhere, and `../..` would read
    # settings from any YAML file into the data's.
    if not isinstance(choice, str) or not re.fullmatch(r"[\w.-]+", choice) or not current.is_file():
        return {}
    now = OmegaConf.to_container(OmegaConf.load(current), resolve=False)
    return {key: value for key, value in now.items() if key not in data and key != "defaults"}


def supported_directions(model) -> tuple[str, ...]:
    translated, skipped = translated_directions(model)
    for direction, reason in skipped.items():
        log.info("Skipping %s: %s", direction, reason)
    return translated


def distinct_counts(dataset) -> tuple[int, int]:
    """Number of distinct source and target images (`distinct_images`): a repeated image must
    not count twice in FID/KID."""
    counts = distinct_images(dataset)
    return counts.get("A", len(dataset)), counts.get("B", len(dataset))


def truth_backgrounds(datamodule, dataset) -> dict[str, torch.Tensor] | None:
    """Per test file name, the background of its shapes test pair (None for other data, and for
    grayscale runs: the shape masks are found by colour, as ShapesTruthCallback says too)."""
    if not is_shapes_dataset(datamodule.data_dir):
        return None
    size, channels = test_image_size(datamodule.data_dir), (datamodule.input_nc, datamodule.output_nc)
    if why := truth_unavailable(size, channels, dataset[0]["A"].shape[-2:]):
        log.info("No ground-truth scores: %s", why)
        return None
    return {name: background_tensor(meta_k, size) for name, meta_k in load_test_meta(datamodule.data_dir).items()}


#: data settings that shape the images a model sees: evaluated otherwise than trained, its scores
#: no longer compare with the run's
IMAGE_SETTINGS = ("preprocess", "load_size", "crop_size", "size", "resize_interpolation", "bit_depth", "to_srgb")
#: data settings the networks are built for: read otherwise, the images do not fit them
CHANNEL_SETTINGS = ("input_nc", "output_nc")


def settings_read_otherwise(model, datamodule, keys: tuple[str, ...]) -> list[str]:
    """The data settings of `keys` that `datamodule` has otherwise than the run was trained with."""
    hparams = getattr(datamodule, "hparams", {})
    return [key for key in keys
            if key in model.training_data and key in hparams and hparams[key] != model.training_data[key]]


def check_trained_channels(model, datamodule, ckpt_path) -> None:
    """`data=NAME` of other channel counts than the run's (a grayscale run scored on an RGB data
    config) failed inside the first convolution, or, for output_nc alone, scored grey fakes
    against colour reals: refused, naming the values the run was trained with."""
    hparams = getattr(datamodule, "hparams", {})
    differing = settings_read_otherwise(model, datamodule, CHANNEL_SETTINGS)
    if differing:
        given = ", ".join(f"data.{key}={hparams[key]}" for key in differing)
        fix = " ".join(f"++data.{key}={model.training_data[key]}" for key in differing)
        raise ValueError(f"{given}, but ckpt_path={ckpt_path} was trained with "
                         f"{', '.join(f'data.{key}={model.training_data[key]}' for key in differing)}: its networks "
                         f"read and write that many channels. Pass {fix}")


def warn_about_other_image_settings(model, datamodule) -> None:
    """`data=NAME` brings that config's image settings, perhaps not the run's (a run trained at
    crop_size=128 on a config of 256): named with the values that read the data as trained."""
    # `++`: most of these keys are in no data config (a model's config adds resize_interpolation),
    # and Hydra refuses a plain override of a key the config lacks.
    differing = [pasteable_setting(f"data.{key}", model.training_data[key])
                 for key in settings_read_otherwise(model, datamodule, IMAGE_SETTINGS)]
    if differing:
        log.warning("The data is read otherwise than the run was trained on, so the scores do not compare with the "
                    "run's: pass %s to read it as trained", " ".join(differing))


def check_trained_direction(model, datamodule, ckpt_path) -> None:
    """The data must be delivered the way round the model was trained: with the other
    `data.direction`, its AtoB generator would be scored on the wrong domain's images."""
    trained = model.training_data.get("direction")
    if trained is not None and trained != datamodule.direction:
        raise ValueError(f"data.direction={datamodule.direction}, but ckpt_path={ckpt_path} was trained with "
                         f"data.direction={trained}: pass ++data.direction={trained}")


def clear_earlier_outputs(folder: Path) -> None:
    """`folder` (fakeA/, fakeB/, samples/ of `output_dir`) made, and emptied of an earlier
    evaluation's images: an output_dir used again keeps only this evaluation's, which a tool
    scoring the folder (pytorch-fid, say) would otherwise mix with fewer or other images."""
    earlier = sorted(folder.rglob("*.png")) if folder.is_dir() else []
    if earlier:
        log.info("Removing the %d images an earlier evaluation left in %s", len(earlier), folder)
        for path in earlier:
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def saved_image_limit(value) -> int | None:
    """eval's `save_images`: how many images to write per direction (or of the samples); None: all."""
    if value is True:
        return None
    if value is False:
        return 0
    if is_int(value) and value >= 0:
        return value
    raise ValueError(f"save_images={value!r} must be true (write every translation or sample), false (score "
                     "without writing any) or how many to write per direction")


def evaluate_direction(model, loader, direction: str, n_source: int, n_target: int, scorer: FidKidScorer,
                       backgrounds: dict | None, fake_dir: Path, device,
                       source_folder: Path | None = None, label_scores=None,
                       save_limit: int | None = None) -> dict[str, float]:
    """Translate each of the first `n_source` source images once, write the first `save_limit`
    (None: all) to `fake_dir` (one PNG per source file, named by `OutputNames`), and score all
    of them against the first `n_target` targets (and, given `label_scores`, as label maps:
    src/utils/label_evaluation.py)."""
    source_key, target_key = DIRECTION_KEYS[direction]
    clear_earlier_outputs(fake_dir)
    output_names, saved = OutputNames(fake_dir, source_folder), 0
    truth = ShapesTruthScorer().to(device) if backgrounds is not None else None
    identity = ShapesTruthScorer().to(device) if backgrounds is not None else None
    scorer.reset()
    index = 0
    for batch in loader:
        size = batch[source_key].size(0)
        keep_source = torch.arange(index, index + size) < n_source
        keep_target = torch.arange(index, index + size) < n_target
        index += size
        source, target = batch[source_key].to(device), batch[target_key].to(device)
        fake = model.translate(source[keep_source], direction)
        scorer.update(real=target[keep_target], fake=fake)
        sources = [p for p, keep in zip(batch[f"{source_key}_path"], keep_source) if keep]
        for source_path, image in zip(sources, to_uint8_images(fake)):
            output_path = output_names.target(source_path)   # every name checked, written or not
            if save_limit is None or saved < save_limit:
                save_in_format(image, output_path, "png")
                saved += 1
        if truth is not None:
            bg = torch.stack([backgrounds[Path(p).name] for p in batch[f"{source_key}_path"]]).to(device)
            truth.update(fake, target[keep_source], bg[keep_source])
            identity.update(source[keep_source], target[keep_source], bg[keep_source])
        if label_scores is not None:
            label_scores.update(source[keep_source], target[keep_source], fake)
    metrics = scorer.compute()
    if label_scores is not None:
        metrics.update(label_scores.compute())
    if truth is not None:
        metrics.update({k: float(v) for k, v in truth.compute().items()})
        metrics.update({f"identity_{k}": float(v) for k, v in identity.compute().items()})
    return metrics


def sample_classes(labels: torch.Tensor, count: int) -> torch.Tensor:
    """The class of each of `count` samples drawn against reference images of `labels`: with
    one sample per image, image i's own; otherwise the sorted labels taken evenly spaced
    (i * N // count), so every class has its share of the samples to within one, however many
    samples there are (the reference images' first `count` would not do: the labelled datasets
    interleave their classes, so their first images over-represent the small classes). The
    picks keep the reference images' order, so that the first samples (the PNGs save_images=N
    keeps) show every class, not the first class alone."""
    if count == len(labels):
        return labels
    return labels[sorted(proportional_picks(labels.tolist(), count))]


def evaluate_samples(model: NoiseToImageModel, loader, scorer: FidKidScorer, sample_dir: Path,
                     num_samples: int | None = None, classifier: ClassifierScorer | None = None,
                     save_limit: int | None = None) -> dict[str, float]:
    """The reference images of `loader` against `num_samples` samples (None: one per reference
    image), the first `save_limit` of them (None: all) written to `sample_dir/<i>.png`, all
    scored (with the Inception Score when the scorer computes it). Sample i's latent is fixed by i, as in training's evaluation; a conditional
    model draws it of the class `sample_classes` gives it (image i's when there is one sample
    per image). Given `classifier`, the samples (and the reference images) are also scored by
    a classifier of the data's classes (src/metrics/image_classifier.py)."""
    clear_earlier_outputs(sample_dir)
    scorer.reset()
    labels = []
    for batch in loader:
        scorer.update(real=batch["A"].to(model.device))
        # A copy: a tensor a loader worker sent holds an open file while it lives (torch's
        # file_descriptor sharing), and 10k test images at batch 8 outlast `ulimit -n` 1024.
        labels.append(batch["label"].clone())
        if classifier is not None:
            classifier.update_real(batch["A"], batch["label"])
    labels = torch.cat(labels)
    count = len(labels) if num_samples is None else num_samples
    sample_labels = sample_classes(labels, count)
    for start in range(0, count, loader.batch_size):
        index = torch.arange(start, min(start + loader.batch_size, count))
        fake = model.samples_of({"index": index, "label": sample_labels[index]})
        scorer.update(fake=fake)
        if classifier is not None:
            classifier.update_fake(fake, sample_labels[index])
        for i, image in zip(index.tolist(), to_uint8_images(fake)):
            if save_limit is None or i < save_limit:
                save_in_format(image, sample_dir / f"{i:06d}.png", "png")
    return {**scorer.compute(), **(classifier.compute() if classifier is not None else {})}


def real_and_generated(model: NoiseToImageModel, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(real series, one sample per real series of its condition, the labels), on the CPU."""
    reals, fakes, labels = [], [], []
    for batch in loader:
        real, fake = model.evaluation_pair(batch, SAMPLES)
        reals.append(real.to("cpu", copy=True))   # (copies: see evaluate_samples)
        fakes.append(fake.cpu())
        labels.append(batch["label"].clone())
    return torch.cat(reals), torch.cat(fakes), torch.cat(labels)


def evaluate_series(model: NoiseToImageModel, loader, output_dir: Path, train_loader=None,
                    scale: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """A series model (RGAN): one sample per test series, sample i drawn for test series i (of
    its label, for RCGAN), as `samples.npy` (N, T, C: series, step, channel in the data's column
    order), in the data's units where `scale` (each channel's training minimum and maximum,
    which the CSV data scales to [-1, 1]) is given, as the model's [-1, 1] values otherwise, and
    then also as `samples_scaled.npy`; a conditional model's labels as `labels.npy`. Then a plot
    of the first ones beside the real ones (`samples.png`), and the MMD^2 between the two sets,
    the measure its callback logs during training. Given `train_loader`, a conditional model
    (RCGAN) is also scored as its paper does: TSTR and TRTR accuracy (src/metrics/tstr.py),
    with one sample per training series of its condition as the synthetic training set."""
    real, fake, labels = real_and_generated(model, loader)
    output_dir.mkdir(parents=True, exist_ok=True)

    def save_array(name: str, array: np.ndarray) -> None:   # whole or not at all: a cut .npy looks whole
        write_whole(output_dir / name, lambda stream: np.save(stream, array), sync=False)

    if scale is None:
        save_array("samples.npy", fake.numpy())
    else:
        low, high = scale
        save_array("samples.npy", (fake.double().numpy() + 1) / 2 * (high - low) + low)
        save_array("samples_scaled.npy", fake.numpy())
    if model.num_classes:
        save_array("labels.npy", labels.numpy())
    shown = min(8, len(real))
    save_image(make_grid({"real": plot_series(real[:shown]), "fake": plot_series(fake[:shown])}),
               output_dir / "samples.png")
    metrics = {"mmd2": sample_mmd2(real, fake)}
    if train_loader is not None and model.num_classes:
        real_train, synthetic, train_labels = real_and_generated(model, train_loader)
        metrics.update(tstr_trtr((synthetic, train_labels), (real_train, train_labels), (real, labels),
                                 model.num_classes))
    return metrics


def runs_feature_extractor(ckpt_path) -> tuple[str | None, str | None]:
    """(extractor, weights file) the checkpoint's run scored its FIDs with: what its FID callback
    recorded in the checkpoint, or for a checkpoint without that record its Hydra config's
    `callbacks.fid_kid` settings, `auto` there meaning its data's choice; (None, None) without
    either (a checkpoint copied away from its run folder kept the record)."""
    measured = (recorded_fid_state(ckpt_path) or {}).get("measure")
    if measured is not None:
        return measured["feature_extractor"], measured.get("feature_extractor_weights_path")
    run_config = run_config_path(ckpt_path)
    if not run_config.is_file():
        return None, None
    run_cfg = OmegaConf.load(run_config)

    def setting(key: str):
        return OmegaConf.select(run_cfg, key, default=None, throw_on_resolution_failure=False)

    name = setting("callbacks.fid_kid.feature_extractor")
    if name in (None, "auto"):
        name = setting("data.feature_extractor")
    return name, setting("callbacks.fid_kid.feature_extractor_weights_path")


def recorded_fid_state(ckpt_path) -> dict | None:
    """The state of the checkpoint's FID callback: the settings it measured with (`measure`:
    the feature extractor, its weights file, the images, the directions) and the classifier of
    the data's classes it scored samples with (`classifier`); None without one."""
    if not Path(ckpt_path).is_file():
        return None
    states = load_checkpoint_file(ckpt_path).get("callbacks") or {}
    return next((state for state in states.values()
                 if isinstance(state, dict) and (state.get("measure") or {}).get("feature_extractor")), None)


def feature_extractor_choice(cfg: DictConfig, datamodule) -> tuple[str, str | None]:
    """(extractor, weights file) for eval's `feature_extractor`: `auto` takes the one the
    checkpoint's run scored its FIDs with, so eval's numbers compare with the run's logged ones
    (a run trained with random_cnn on real data is scored with random_cnn, not Inception), and
    the data's choice when neither the checkpoint nor the run's config says."""
    name, weights_path = cfg.feature_extractor, cfg.get("feature_extractor_weights_path")
    if name != "auto":
        return name, weights_path
    run_name, run_weights_path = runs_feature_extractor(cfg.ckpt_path)
    if run_name is not None:
        log.info("feature_extractor=%s: the extractor of the checkpoint's run (feature_extractor=NAME for another)",
                 run_name)
        if weights_path is None and run_weights_path is not None:
            # The run's offline copy of torch-fidelity's file; on another machine it may be
            # elsewhere, and torch-fidelity fetches the same file itself.
            if Path(run_weights_path).expanduser().is_file():
                weights_path = run_weights_path
            else:
                log.info("The run's feature_extractor_weights_path %s is not on this machine: torch-fidelity's "
                         "download (feature_extractor_weights_path=/path/to/the/file for a local copy)",
                         run_weights_path)
        return run_name, weights_path
    return data_feature_extractor(datamodule), weights_path


def fid_kid_scorer(cfg: DictConfig, datamodule, device, samples: bool = False) -> tuple[FidKidScorer, str]:
    """The FID/KID scorer eval's settings ask for, and the name of its feature extractor; for a
    noise model's `samples`, with the Inception Score unless `inception_score=false`."""
    name, weights_path = feature_extractor_choice(cfg, datamodule)
    extractor = build_feature_extractor(name, weights_path, device, settings="")
    splits = cfg.get("inception_score_splits", 10) if samples and cfg.get("inception_score", True) else None
    # On the CPU in place of Apple's MPS, which has no float64 for the metrics' states
    return FidKidScorer(extractor, kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size,
                        inception_score_splits=splits).to(float64_device(device)), name


def evaluate_translations(model, datamodule, dataset, loader, scorer: FidKidScorer, output_dir: Path,
                          device, segmenter: Segmenter | None = None,
                          save_limit: int | None = None) -> tuple[dict, dict]:
    """Every direction the model translates: (what was translated, how many of the translations
    were written into which folder, its metrics)."""
    backgrounds = truth_backgrounds(datamodule, dataset)
    counts = distinct_counts(dataset)
    directions = {}
    for direction in supported_directions(model):   # every one checked before any image is translated
        source, target = domain_folders(datamodule, direction)
        n_source, n_target = counts if direction == "AtoB" else counts[::-1]
        if min(n_source, n_target) < 2:
            raise ValueError(f"eval.py scores {direction} with FID/KID between the translations of the "
                             f"{n_source} test image(s) of {datamodule.split_folder('test', source)} and the "
                             f"{n_target} of {datamodule.split_folder('test', target)}, which need at least 2 "
                             f"each: add test images (src/translate.py translates without scoring)")
        directions[direction] = {"from": source, "to": target, "translated": n_source, "real": n_target,
                                 "output": f"fake{target}", "saved": min_or_all(n_source, save_limit),
                                 "kid_subset_size": scorer.kid.subset_size_for(n_target, n_source)}
    results = {direction: evaluate_direction(model, loader, direction, plan["translated"], plan["real"], scorer,
                                             backgrounds, output_dir / plan["output"], device,
                                             datamodule.split_folder("test", plan["from"]),
                                             label_scores_for(datamodule, plan["from"], plan["to"], segmenter, device),
                                             save_limit)
               for direction, plan in directions.items()}
    return directions, results


def min_or_all(count: int, limit: int | None) -> int:
    return count if limit is None else min(count, limit)


def samples_images(model) -> bool:
    """Whether the model is a noise-to-image model of images (not of series, not a translator)."""
    return isinstance(model, NoiseToImageModel) and SAMPLES in model.evaluation_streams(())[0]


def sample_protocol(cfg: DictConfig, model) -> tuple[str, int | None, int | None]:
    """(reference split, number of samples, number of reference images) of eval's `real_split` /
    `num_samples` / `num_real`, which only an image noise-to-image model takes."""
    split, count, reals = cfg.get("real_split", "test"), cfg.get("num_samples"), cfg.get("num_real")
    if not samples_images(model) and (split != "test" or count is not None or reals is not None):
        raise ValueError(f"real_split={split} / num_samples={count} / num_real={reals} are for the image "
                         f"noise-to-image models (GAN ... StyleGAN); {type(model).__name__} is evaluated on the test "
                         f"split: leave them unset")
    if split not in ("train", "test"):
        raise ValueError(f"real_split={split!r} must be train or test (the reference images FID/KID compare with)")
    for key, value, unset in (("num_samples", count, "one per reference image"),
                              ("num_real", reals, "every image of real_split")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
            raise ValueError(f"{key}={value!r} must be an integer >= 2 (FID needs two), or null: {unset}")
    return split, count, reals


def apply_truncation(model, psi) -> None:
    """eval's `truncation_psi` (StyleGAN): sample with w = w_avg + psi (w - w_avg) instead of the
    checkpoint's setting (the paper's figures use 0.7, its FIDs 1)."""
    if psi is None:
        return
    if not hasattr(getattr(model, "generator", None), "truncation_psi"):
        raise ValueError(f"truncation_psi={psi} is for StyleGAN checkpoints; {type(model).__name__} has no truncation: "
                         "leave it unset")
    if not is_number(psi):
        raise ValueError(f"truncation_psi={psi!r} must be a number (1: off, 0: every sample at the mean w)")
    model.generator.truncation_psi = float(psi)


def markdown_row(name: str, metrics: dict[str, dict[str, float]]) -> str:
    cells = [name]
    for direction, values in metrics.items():
        present = [f"{c}={values[c]:.3f}" for c in TABLE_COLUMNS if c in values]
        cells.append(f"{direction}: " + ", ".join(present))
    return "| " + " | ".join(cells) + " |"


def run_evaluation(cfg: DictConfig) -> dict[str, dict[str, float]]:
    refuse_job_chdir()
    require_path("output_dir", cfg.output_dir)
    cfg = home_expanded(cfg, ("ckpt_path", "output_dir"))
    # Two evaluations into one output_dir would delete each other's images and keep one's scores.
    with FolderLock(cfg.output_dir, "an evaluation's output folder", "Give this evaluation its own output_dir=..., "
                    "or run it once the other has ended.", name=".eval.lock"):
        # An earlier evaluation's scores go first, before anything can fail: a re-run that cannot
        # load its checkpoint or data must not leave them as its result (a sweep's table would
        # show them as completed), nor, stopped halfway, beside images they do not describe.
        (Path(cfg.output_dir) / EVAL_RESULT).unlink(missing_ok=True)
        check_checkpoint_settings(cfg)
        require_int("batch_size", cfg.batch_size)
        if OmegaConf.is_config(cfg.get("name")):
            raise ValueError(f"name={OmegaConf.to_container(cfg.name)!r} must be a single name (the row of the "
                             "printed table), or null for the model class and data name")
        device = resolve_device(cfg.get("device", "auto"))
        check_seed("seed", cfg.get("seed"))
        save_limit = saved_image_limit(cfg.get("save_images", True))
        with isolated_rng(device, cfg.get("seed")), evaluation_failures_explained(cfg.batch_size):
            return evaluate_checkpoint(cfg, device, save_limit)


@contextlib.contextmanager
def evaluation_failures_explained(batch_size: int):
    """An evaluation that runs out of memory, or whose loader's workers fail, says what to change
    (torch's words name neither setting)."""
    try:
        yield
    except Exception as error:
        if is_out_of_memory(error):
            log.error("Out of memory while evaluating: a smaller batch_size (now %s) holds fewer translations and "
                      "features at once; device=cpu evaluates in the machine's memory", batch_size)
        elif hint := loader_failure_hint(error, "evaluation", key_prefix="++"):
            log.error(hint)
        raise


def evaluate_checkpoint(cfg: DictConfig, device: torch.device,
                        save_limit: int | None = None) -> dict[str, dict[str, float]]:
    """The body of `run_evaluation`, its settings checked, inside the evaluation's seeded RNG."""
    model = load_model(cfg.ckpt_path, map_location=device, use_ema=cfg.get("use_ema", True))
    data = data_config(cfg, model)
    check_argument_types(data, "data")
    # data=NAME of another kind than the model's would fail at the first batch with a KeyError.
    type(model).check_data_config(data, f"{type(model).__name__} (ckpt_path={cfg.ckpt_path})")
    datamodule = hydra.utils.instantiate(data)
    datamodule.prepare_data()
    datamodule.setup("test")
    generates = isinstance(model, NoiseToImageModel)
    if generates and model.num_classes and datamodule.num_classes != model.num_classes:
        raise ValueError(f"ckpt_path={cfg.ckpt_path} generates {model.num_classes} classes, and the data "
                         f"({datamodule.name}) has {datamodule.num_classes}: evaluate it on the data it was trained on")
    if generates and model.num_classes:   # (an unconditional model's samples mean no class)
        check_same_classes(model.loaded_class_folders, datamodule, f"ckpt_path={cfg.ckpt_path}")
    if not generates:
        check_trained_direction(model, datamodule, cfg.ckpt_path)
    check_trained_channels(model, datamodule, cfg.ckpt_path)
    warn_about_other_image_settings(model, datamodule)
    real_split, num_samples, num_real = sample_protocol(cfg, model)
    if generates and cfg.get("segmenter_path") is not None:
        raise ValueError(f"segmenter_path={cfg.segmenter_path} scores photos translated from label maps; "
                         f"{type(model).__name__} generates from noise: leave it unset")
    apply_truncation(model, cfg.get("truncation_psi"))
    dataset = datamodule.dataset(real_split, train=False)
    if num_real is not None and num_real < len(dataset):
        # The papers' FID 50k takes 50k reference images of a larger training set (FFHQ's 70k,
        # LSUN's millions: all of them would cost hours and their features' memory).
        dataset = torch.utils.data.Subset(dataset, list(datamodule.evaluation_indices(real_split, num_real)))
    if generates and len(dataset) < 2:   # before the classifier is trained and the samples written
        raise ValueError(f"eval.py scores {type(model).__name__}'s samples against the {len(dataset)} image(s) of the "
                         f"{real_split} split (real_split={real_split}, num_real={num_real}), and FID, KID and MMD "
                         "need at least 2: score it against more images")
    batch_size = cfg.batch_size
    if getattr(datamodule, "keeps_image_size", False) and batch_size > 1:
        log.info("batch_size=1 instead of %d: data.preprocess keeps each image's size", batch_size)
        batch_size = 1
    # data.num_workers decode in parallel: FID 50k of a training split is 50k decodes.
    loader = torch.utils.data.DataLoader(dataset, shuffle=False, **datamodule.loader_settings(batch_size))
    output_dir = Path(cfg.output_dir)
    report = {"ckpt_path": recorded_checkpoint_path(cfg.ckpt_path), "iteration": model.loaded_iteration,
              "weights": model.loaded_weights, "data": datamodule.name}
    if cfg.get("truncation_psi") is not None:
        report["truncation_psi"] = float(cfg.truncation_psi)
    if generates and not samples_images(model):   # series: no images to score
        directions = {SAMPLES: {"real": len(dataset), "generated": len(dataset), "output": "samples.npy"}}
        train_loader = (torch.utils.data.DataLoader(datamodule.dataset("train", train=False),
                                                    **datamodule.loader_settings(batch_size))
                        if cfg.get("tstr", True) and model.num_classes else None)
        results = {SAMPLES: evaluate_series(model, loader, output_dir, train_loader,
                                            getattr(datamodule, "scale", None))}
    elif generates:
        scorer, report["feature_extractor"] = fid_kid_scorer(cfg, datamodule, device, samples=True)
        report["kid_subsets"] = scorer.kid.subsets
        directions = {SAMPLES: {"real": len(dataset), "real_split": real_split,
                                "generated": num_samples or len(dataset), "output": SAMPLES,
                                "saved": min_or_all(num_samples or len(dataset), save_limit),
                                "kid_subset_size": scorer.kid.subset_size_for(len(dataset),
                                                                              num_samples or len(dataset))}}
        # The run's own classifier where it was trained under these settings: the scores then
        # compare with the run's logged ones.
        classifier = (classifier_of_the_data(datamodule, cfg.get("classifier_max_images", 10000),
                                             cfg.get("classifier_epochs", 10), cfg.get("inception_score_splits", 10),
                                             conditional=bool(model.num_classes),
                                             recorded=(recorded_fid_state(cfg.ckpt_path) or {}).get("classifier"))
                      if cfg.get("classifier_score", True) else None)
        results = {SAMPLES: evaluate_samples(model, loader, scorer, output_dir / SAMPLES, num_samples,
                                             classifier and classifier.to(float64_device(device)), save_limit)}
    else:
        scorer, report["feature_extractor"] = fid_kid_scorer(cfg, datamodule, device)
        report["kid_subsets"] = scorer.kid.subsets
        report["data_direction"] = datamodule.direction
        directions, results = evaluate_translations(model, datamodule, dataset, loader, scorer, output_dir, device,
                                                    segmenter_for(datamodule, cfg.get("segmenter_path"),
                                                                  cfg.get("segmenter_size"), device), save_limit)
    report.update({"directions": directions, "metrics": results})
    # Whole: the table of an eval sweep (`eval.py -m`) reads it while other jobs write theirs.
    write_text_whole(output_dir / EVAL_RESULT, json.dumps(report, indent=2))
    name = str(cfg.name) if cfg.get("name") is not None else f"{model.display_name()} / {datamodule.name}"
    if report.get("feature_extractor"):   # a random CNN's FID beside an Inception one would mislead
        name += f" [{report['feature_extractor']}]"
    row = markdown_row(name, results)
    print(row)
    log.info("Wrote %s", output_dir / EVAL_RESULT)
    return results
