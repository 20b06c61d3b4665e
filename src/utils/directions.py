"""Translation directions: their names, the batch keys each reads, and which a model translates."""
from __future__ import annotations

DIRECTIONS = ("AtoB", "BtoA")
#: direction -> (batch key of the source images, batch key of the real target images)
DIRECTION_KEYS = {"AtoB": ("A", "B"), "BtoA": ("B", "A")}


def domain_folders(datamodule, direction: str) -> tuple[str, str]:
    """(source, target) dataset domain letters of a model direction: with data.direction=BtoA
    the model's AtoB translates the dataset's B images into its A domain."""
    source, target = datamodule.source_domain, datamodule.target_domain
    return (source, target) if direction == "AtoB" else (target, source)


def trained_domains(model, direction: str) -> tuple[str, str]:
    """(source, target) dataset domain letters of a loaded model's direction, by the
    data.direction it was trained with (`model.training_data`, where it has one)."""
    source, target = DIRECTION_KEYS[direction]
    flipped = getattr(model, "training_data", {}).get("direction") == "BtoA"
    return (target, source) if flipped else (source, target)


def untranslated_directions(model) -> dict[str, str]:
    """Direction -> why `model` does not translate it (pix2pix: BtoA). Asked of the model's
    `generator_for`, which raises ValueError for a direction it has no generator for; no
    image is translated, so every DDP rank gets the same answer before any data is seen."""
    reasons = {}
    for direction in DIRECTIONS:
        try:
            model.generator_for(direction)
        except ValueError as error:
            reasons[direction] = str(error)
    return reasons


def translated_directions(model, among=DIRECTIONS) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the directions of `among` that `model` translates, in their order; direction -> why
    not for each other one of `among`)."""
    untranslated = untranslated_directions(model)
    return (tuple(d for d in among if d not in untranslated),
            {d: untranslated[d] for d in among if d in untranslated})
