"""Build lists of callbacks and loggers from their config groups (a dict of `_target_` nodes)."""
import hydra
from omegaconf import DictConfig

from src.utils.config_checks import check_argument_types


def instantiate_list(cfg: DictConfig | None, key: str) -> list:
    """Instantiate every `_target_` node under `cfg`; a null entry disables that item."""
    if not cfg:
        return []
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"Config '{key}' must be a mapping of name -> {{_target_: ...}}")
    items = []
    for name, node in cfg.items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(f"Config '{key}.{name}' needs a '_target_' key (or null to disable it)")
        check_argument_types(node, f"{key}.{name}")
        items.append(hydra.utils.instantiate(node))
    return items
