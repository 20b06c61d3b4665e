"""Translate images with a trained model: `python src/translate.py ckpt_path=... input=... output=...`.

Composes conf/translate.yaml, loads the checkpoint (src/utils/checkpoint_loading.py), writes one
PNG (or JPEG: `format=jpg`) per input image named after its source file, and with `export=onnx|torchscript` writes the
direction's generator as one graph checked against PyTorch (src/utils/export.py).
"""
import json
import logging
import os
import sys
import time
import unicodedata
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI on import
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python src/translate.py` from the root

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.utils.checkpoint_loading import check_checkpoint_settings, load_model, recorded_checkpoint_path  # noqa: E402
from src.utils.export import (EXPORT_FORMATS, check_export_format, check_export_size, export_card_path,  # noqa: E402
                              export_path, export_translation)
from src.data.folders import lies_inside, output_paths, refuse_existing_outputs  # noqa: E402
from src.data.image_io import WRITE_FORMATS, save_in_format, whole_image_file  # noqa: E402
from src.utils.config_checks import (check_seed, home_expanded, refuse_job_chdir, require_bool,  # noqa: E402
                                     require_path)
from src.utils.directions import trained_domains  # noqa: E402
from src.utils.folder_lock import FolderLock  # noqa: E402
from src.utils.library_warnings import library_output_into_the_log  # noqa: E402
from src.utils.process_state import threads_within_usable_cpus  # noqa: E402
from src.utils.rng import isolated_rng  # noqa: E402
from src.utils.whole_files import write_text_whole  # noqa: E402
from src.utils.translation import (check_direction, fixed_translation_size, list_input_images,  # noqa: E402
                                   resolve_device, translate_images)

log = logging.getLogger(__name__)


def run_translation(cfg: DictConfig) -> dict:
    """Translate `cfg.input` into `cfg.output` (and export); returns what was written, what was
    kept (skip_existing), and with which weights ("ema": the generators' average of a run that kept
    one, or "trained")."""
    refuse_job_chdir()
    cfg = home_expanded(cfg, ("ckpt_path", "input", "output"))
    check_checkpoint_settings(cfg)
    for key in ("input", "output"):   # (`input=0` read as a number is not a missing input)
        if cfg.get(key) is not None:
            require_path(key, cfg[key])
    if not cfg.get("input") and not cfg.get("export"):
        raise ValueError("input is required: input=path/to/image_or_folder (or export=onnx|torchscript to only export)")
    if cfg.get("export"):
        check_export_format(cfg.export)
    paths = list_input_images(cfg.input) if cfg.get("input") else []
    targets = output_paths(paths, Path(cfg.output), Path(cfg.input) if paths and Path(cfg.input).is_dir() else None,
                           output_suffix(cfg))
    if paths and Path(cfg.input).is_dir() and lies_inside(cfg.output, cfg.input):
        raise ValueError(f"output={cfg.output} lies inside input={cfg.input}: a later run on that input would "
                         f"translate these outputs too; write them elsewhere")
    fixed_translation_size(cfg.get("size"), cfg.get("short_side"))   # checked before anything is written
    outputs_to_write(cfg, paths, targets, scan=False)   # (refused here, before the model loads)
    device = resolve_device(cfg.get("device", "auto"))
    check_seed("seed", cfg.get("seed"))
    with isolated_rng(device, cfg.get("seed")):
        return translate_and_export(cfg, paths, targets, device)


def output_format(cfg: DictConfig) -> str:
    """The format the translations are written in (`format`, png when a config lacks it)."""
    chosen = cfg.get("format", "png")
    if chosen not in WRITE_FORMATS:
        raise ValueError(f"format={chosen!r} must be one of {', '.join(WRITE_FORMATS)} (the translations' file "
                         f"format: png lossless, jpg at quality 95)")
    return chosen


def output_suffix(cfg: DictConfig) -> str:
    return WRITE_FORMATS[output_format(cfg)][0]


def outputs_to_write(cfg: DictConfig, paths: list[Path], targets: dict[Path, Path], scan: bool = True
                     ) -> tuple[list[Path], list[str], bool]:
    """What to do about output files that exist already: refuse them (the default: another run's
    outputs would be replaced or mixed in with these), replace them (`overwrite`), or keep them
    and translate only the inputs without one (`skip_existing`: an interrupted folder translation
    continues; outputs are written whole, so one that exists is complete, but for one a power loss
    cut short after its rename, which is made again). skip_existing keeps outputs of this input
    only: a folder whose record names other inputs (trip1/ and trip2/ both hold IMG_0001.jpg) would
    keep trip1's translation for trip2's photo. Returns the inputs to translate, the outputs kept,
    and whether the export is kept. `scan=False`: the first look, before the model loads, which
    refuses and keeps nothing yet (skip_existing's look at each output comes under the lock)."""
    overwrite, skip_existing = cfg.get("overwrite", False), cfg.get("skip_existing", False)
    require_bool("overwrite", overwrite)
    require_bool("skip_existing", skip_existing)
    if overwrite and skip_existing:
        raise ValueError("overwrite=true replaces the outputs that exist and skip_existing=true keeps them: "
                         "pass one of them")
    exported = [export_path(cfg.output, cfg.direction, cfg.export)] if cfg.get("export") else []
    if overwrite:
        return paths, [], False
    if not skip_existing:
        # (whether they are this translation's is read once the model is: its iteration, say)
        refuse_existing_outputs([*targets.values(), *exported], "pass overwrite=true to replace them, or "
                                "skip_existing=true to translate only the inputs without one (where the folder's "
                                f"{RECORD_NAME} is of this checkpoint and settings)")
        return paths, [], False
    # (the graph alone, its card not written, was cut off between the two: the card says its input range)
    skip_export = bool(exported) and exported[0].exists() and export_card_path(exported[0]).exists()
    if not scan:
        return paths, [], skip_export
    present = {path: whole_image_file(targets[path]) for path in paths}   # (one look at each: a network disk's)
    kept = [path for path in paths if present[path]]
    if kept:
        refuse_outputs_of_other_inputs(Path(cfg.output), cfg.get("input"), {targets[path]: path for path in kept},
                                       output_suffix(cfg))
        log.info("skip_existing: %d of %d input(s) have their output in %s already (kept, not translated "
                 "again)", len(kept), len(paths), cfg.output)
    if skip_export:
        log.info("skip_existing: %s exists already (kept, not exported again)", exported[0])
    return [path for path in paths if not present[path]], [str(targets[path]) for path in kept], skip_export


def translate_and_export(cfg: DictConfig, paths: list[Path], targets: dict[Path, Path], device: torch.device) -> dict:
    """The body of `run_translation`, its settings checked, inside the translation's seeded RNG
    (`paths`: every input)."""
    output_dir = Path(cfg.output)
    model = load_model(cfg.ckpt_path, map_location=device, use_ema=cfg.get("use_ema", True))
    check_direction(model, cfg.direction)
    if model.training_data.get("direction") == "BtoA":
        source, target = trained_domains(model, cfg.direction)
        log.info("The model was trained with data.direction=BtoA: direction=%s translates the dataset's domain %s "
                 "into %s", cfg.direction, source, target)
    # Two translations into one folder would each pass the checks of its outputs and record before
    # the other wrote them, and mix two models' images under one record: the folder is locked,
    # and looked at again, for what another translation wrote since the first look.
    output_dir.mkdir(parents=True, exist_ok=True)
    with FolderLock(output_dir, "a translation's output folder", "Give this translation its own output=..., or "
                    "run it once the other has ended.", name=".translate.lock"):
        paths, skipped, skip_export = outputs_to_write(cfg, paths, targets)
        if cfg.get("export") and not skip_export:
            check_export_size(model, cfg.direction, cfg.get("export_size"))   # before a folder is translated
        return {**write_translations(cfg, model, paths, targets, device, skip_export), "skipped": skipped}


def write_translations(cfg: DictConfig, model, paths: list[Path], targets: dict[Path, Path], device: torch.device,
                       skip_export: bool) -> dict:
    """translate_and_export's writes, in the locked output folder: the record, the images, the export."""
    output_dir = Path(cfg.output)
    # (also where skip_existing keeps every output: they must be this translation's)
    graph = export_path(output_dir, cfg.direction, cfg.export) if cfg.get("export") else None
    exported = {graph, export_card_path(graph)} if graph is not None else set()
    keep_one_translation_per_folder(output_dir, translation_record(cfg, model), cfg.get("overwrite", False),
                                    {*targets.values(), *exported}, cfg.get("input"))
    written, said, image_format = [], time.monotonic(), output_format(cfg)
    for path, image in translate_images(model, paths, cfg.direction, cfg.batch_size, device, cfg.get("short_side"),
                                        cfg.get("size"), seed=cfg.get("seed")):
        save_in_format(image, targets[path], image_format)
        written.append(str(targets[path]))
        if time.monotonic() - said > PROGRESS_EVERY_S:   # a folder of thousands is not silent for an hour
            log.info("Translated %d of %d image(s)", len(written), len(paths))
            said = time.monotonic()
    if paths:
        log.info("Translated %d image(s) %s into %s with the %s weights", len(written), cfg.direction, output_dir,
                 "averaged (EMA)" if model.loaded_weights == "ema" else "trained")

    report = None
    if cfg.get("export") and not skip_export:
        report = export_translation(model, cfg.direction, cfg.export, output_dir, size=cfg.export_size)
    return {"written": written, "export": report, "weights": model.loaded_weights}


#: the output folder's record of what translated its images (written before the first of them)
RECORD_NAME = "translation.json"
#: seconds between the lines that say how far a folder's translation is
PROGRESS_EVERY_S = 60
#: what a record written before a setting was recorded read as (every translation was a PNG)
RECORDED_BEFORE = {"format": "png"}


def input_name(input_path: str | None) -> str | None:
    return str(Path(input_path).resolve()) if input_path else None


def other_inputs(output_dir: Path, input_path: str | None) -> list[str]:
    """The inputs the folder's record names besides `input_path` (none where it names none: a
    record from before inputs were named)."""
    path = output_dir / RECORD_NAME
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):   # no record (keep_one_translation_per_folder names a broken one)
        return []
    recorded = (record.get("inputs") or []) if isinstance(record, dict) else []
    return [name for name in recorded if name != input_name(input_path)]


def refuse_outputs_of_other_inputs(output_dir: Path, input_path: str | None, kept: dict[Path, Path],
                                   suffix: str) -> None:
    """ValueError where an output skip_existing would keep (`kept`: output -> this input's file)
    is also the output of another input's file translated into the folder (cameras repeat names:
    trip1/IMG_0001.jpg and trip2/IMG_0001.jpg both write IMG_0001.png), which it may be the
    translation of. Names compare as the output folder's do (NFC, any case); an input that cannot
    be listed any more cannot be told apart: said."""
    def key(path: Path) -> str:
        return unicodedata.normalize("NFC", str(path)).casefold()

    ours = {key(output): source for output, source in kept.items()}
    for other in other_inputs(output_dir, input_path):
        try:
            theirs = output_paths(list_input_images(other), output_dir, Path(other) if Path(other).is_dir() else None,
                                  suffix)   # (the folder's one format: its record refuses another)
        except (OSError, ValueError) as error:   # gone, emptied, unreadable, or its names clash by now
            log.warning("skip_existing: %s also holds translations of %s, which cannot be listed (%s): an output "
                        "of the same name as one of this input's is kept as this input's", output_dir, other, error)
            continue
        clash = sorted(output for source, output in theirs.items()
                       if (mine := ours.get(key(output))) is not None and not same_file(mine, source))
        if clash:
            more = f" and {len(clash) - 1} other output(s)" if len(clash) > 1 else ""
            raise ValueError(f"skip_existing=true would keep {clash[0]}{more} for an input of {input_path}, and "
                             f"{other} has an input of that output's name too, translated into {output_dir}: it may "
                             f"be that one's translation. Choose another output folder")


def same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def translation_record(cfg: DictConfig, model) -> dict:
    """What makes an output what it is: the checkpoint's state (last.ckpt moves on while its run
    trains, hence the iteration), the weights, the direction, the scale, the seed (pix2pix's
    test-time dropout draws on it) and the images' file format (None for an export alone, which
    writes none); the inputs may differ: several folders can go into one."""
    return {"ckpt_path": recorded_checkpoint_path(cfg.ckpt_path), "iteration": model.loaded_iteration,
            "weights": model.loaded_weights, "direction": cfg.direction, "short_side": cfg.get("short_side"),
            "size": list(fixed) if (fixed := fixed_translation_size(cfg.get("size"), cfg.get("short_side"))) else None,
            "seed": cfg.get("seed"), "format": output_format(cfg) if cfg.get("input") else None}


def keep_one_translation_per_folder(output_dir: Path, record: dict, overwrite: bool, targets: set[Path],
                                    input_path: str | None = None) -> None:
    """Refuse to add outputs of another checkpoint, iteration or setting to a folder that holds a
    translation's (its RECORD_NAME): skip_existing would keep the old ones beside the new, and a
    folder of other names would mix two models' images without a word. overwrite=true starts the
    folder's record again where this translation replaces every output there, images and exported
    graphs (`targets`: the files it writes); outputs it would leave would pass for its own. Then
    write this translation's record, with the inputs translated into the folder (`input_path`
    added: skip_existing keeps the outputs of one of them only)."""
    path = output_dir / RECORD_NAME
    inputs = [input_name(input_path)] if input_path else []
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
            unreadable = None if isinstance(earlier, dict) else f"a JSON {type(earlier).__name__}, not an object"
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            unreadable = str(error)
        if unreadable is not None:
            # (written whole, a record is cut by nothing of ours: an edit, a copy, another tool)
            # read as another translation's: replaced where this one replaces every output there
            differ, said = {"record": (unreadable, None)}, f"its record unreadable: {unreadable}"
        else:
            earlier = {**RECORDED_BEFORE, **earlier}
            if record["format"] is None or earlier.get("format") is None:   # an export alone: of any images'
                record = {**record, "format": record["format"] or earlier.get("format")}
                earlier = {**earlier, "format": record["format"]}
            differ = {key: (earlier.get(key), value) for key, value in record.items() if earlier.get(key) != value}
            said = "; ".join(f"{key}: {old!r} there, {new!r} here" for key, (old, new) in differ.items())
        exports = [name for suffix in EXPORT_FORMATS.values()
                   for name in (f"generator_*{suffix}", export_card_path(f"generator_*{suffix}").name)]
        images = [f"*{suffix}" for suffix, _ in WRITE_FORMATS.values()]
        outputs = (path for pattern in (*images, *exports) for path in output_dir.rglob(pattern))
        # (looked for first: overwrite=true would be refused for them too; an input folder may lie
        # inside the output folder, and its images are no outputs)
        left = next((path for path in outputs if path not in targets
                     and not (input_path and lies_inside(path, input_path))), None) if differ else None
        if left is not None:
            raise ValueError(f"{output_dir} holds outputs of another translation ({said}) that this one would not "
                             f"replace, even with overwrite=true, e.g. {left}: choose another output folder, or "
                             f"remove them")
        if unreadable is not None and not overwrite:
            raise ValueError(f"{path} is not a translation record ({unreadable}): pass overwrite=true to replace "
                             f"the folder's outputs, or choose another output folder")
        if differ and not overwrite:
            raise ValueError(f"{output_dir} holds the outputs of another translation ({said}): choose another "
                             f"output folder, or pass overwrite=true to replace its outputs")
        if not differ:   # the same translation: of the earlier inputs too
            inputs = [*(name for name in earlier.get("inputs") or [] if name not in inputs), *inputs]
    write_text_whole(path, json.dumps({**record, "inputs": inputs}, indent=2) + "\n")


@hydra.main(version_base="1.3", config_path="../conf", config_name="translate.yaml")
def main(cfg: DictConfig) -> None:
    library_output_into_the_log()
    threads_within_usable_cpus()   # (the command's process: a notebook's run_translation keeps its own count)
    run_translation(cfg)


if __name__ == "__main__":
    main()
