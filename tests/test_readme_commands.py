"""Every `python src/<tool>.py ...` command README.md shows composes: its config groups and keys
exist, and each override parses, so a pasted command fails on nothing but the user's own paths
(checkpoints, data folders). Sweeps are composed at their first value; `-m` and other flags are
Hydra's. Nothing is run."""
import re
import shlex
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.conftest import compose_train_cfg

ROOT = Path(__file__).resolve().parents[1]
#: launchers of other Hydra plugins a README command names (not installed here)
NOT_INSTALLED = ("hydra/launcher=slurm",)


def readme_commands() -> list[tuple[str, list[str]]]:
    """(tool, its arguments) of each command in README.md's bash blocks, continuation lines
    joined and `# comments` dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            found = re.search(r"\bsrc/(train|eval|translate|bench)\.py\b(.*)", line)
            if found:
                commands.append((found.group(1), shlex.split(found.group(2), comments=True)))
    # `make train|bench ARGS="..."` (the Makefile's train adds experiment=quickstart), in text too
    for tool, arguments in re.findall(r"make (train|bench) ARGS=\"([^\"]*)\"", (ROOT / "README.md").read_text()):
        commands.append((tool, ["experiment=quickstart"] * (tool == "train") + shlex.split(arguments)))
    return commands


def first_of_sweeps(arguments: list[str]) -> list[str]:
    """The overrides of a command, each sweep (`a,b`, `range(...)`) at its first value."""
    parser = OverridesParser.create()
    overrides = []
    for argument in arguments:
        if argument.startswith("-"):   # -m, --cfg job: Hydra's flags
            continue
        argument = re.sub(r"<[^<>]+>", "filled_in", argument)   # a placeholder the user fills in (<date>)
        (parsed,) = parser.parse_overrides([argument])
        if parsed.is_sweep_override():
            first = next(iter(parsed.sweep_string_iterator()))
            argument = f"{argument.split('=', 1)[0]}={first}"
        overrides.append(argument)
    return overrides


COMMANDS = readme_commands()


def test_the_readme_shows_commands_of_every_tool():
    assert {tool for tool, _ in COMMANDS} == {"train", "eval", "translate", "bench"} and len(COMMANDS) > 40


@pytest.mark.parametrize("tool,arguments", COMMANDS, ids=[" ".join([tool, *args])[:80] for tool, args in COMMANDS])
def test_a_readme_command_composes(tool, arguments, tmp_path):
    if any(argument in NOT_INSTALLED for argument in arguments):
        pytest.skip("names a launcher plugin this machine does not install")
    try:
        compose_train_cfg(first_of_sweeps(arguments), tmp_path / "run", tmp_path / "data", config_name=tool)
    finally:
        GlobalHydra.instance().clear()
