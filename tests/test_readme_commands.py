"""Every `python src/<tool>.py ...` command README.md and the configs' comments show composes: its config groups and keys
exist, and each override parses, so a pasted command fails on nothing but the user's own paths
(checkpoints, data folders). Sweeps are composed at their first value; `-m` and other flags are
Hydra's. Nothing is run."""
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.conftest import compose_train_cfg

ROOT = Path(__file__).resolve().parents[1]
#: a launcher plugin a command names, and the module that installs it
PLUGINS = {"hydra/launcher=slurm": "hydra_plugins.hydra_submitit_launcher"}


def commands_in(text: str, command_lines_only: bool = False) -> list[tuple[str, list[str]]]:
    """(tool, its arguments) of each `src/<tool>.py` command in `text` (with `command_lines_only`,
    of lines that are a `python src/...` command, not prose naming one): continuation lines joined,
    `# comments` dropped, placeholders (`<run folder>`) filled in, `[key=...]` (optional) left out."""
    commands = []
    start = r"^\s*python " if command_lines_only else r"\b"
    for line in text.replace("\\\n", " ").splitlines():
        found = re.search(start + r"src/(train|eval|translate|bench)\.py\b(.*)", line)
        if found:
            arguments = shlex.split(re.sub(r"<[^<>]+>", "filled_in", found.group(2)), comments=True)
            commands.append((found.group(1), [a for a in arguments if not a.startswith("[")]))
    return commands


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def experiment_commands() -> list[tuple[str, list[str]]]:
    """The commands of each experiments/*/README.md's bash blocks, a `<model>` in them filled in with
    each model its run.sh trains by default (`set -- cyclegan pix2pix ...`), and the bench README's
    `make bench ARGS="..."`."""
    commands = []
    for readme in sorted((ROOT / "experiments").glob("*/README.md")):
        text = readme.read_text()
        run_script = readme.parent / "run.sh"
        models = re.search(r"set -- ([\w ]+);", run_script.read_text()).group(1).split() if run_script.exists() else []
        for block in bash_blocks(text):
            if "<model>" in block:
                assert models, f"{readme} shows <model> commands but no run.sh lists its models"
                commands += [command for model in models for command in commands_in(block.replace("<model>", model))]
            else:
                commands += commands_in(block)
        commands += [("bench", shlex.split(arguments)) for arguments in re.findall(r"make bench ARGS=\"([^\"]*)\"", text)]
    return commands


def shown_commands() -> list[tuple[str, list[str]]]:
    """The commands of README.md's bash blocks and of the configs' comments and `--help` headers,
    README's `make train|bench ARGS="..."` (the Makefile's train adds experiment=quickstart), and
    the experiments' READMEs' commands."""
    readme = (ROOT / "README.md").read_text()
    commands = [command for block in bash_blocks(readme) for command in commands_in(block)]
    for config in sorted((ROOT / "conf").rglob("*.yaml")):
        # a comment's command goes on in the next comment line
        lines = [re.sub(r"^\s*#\s?", "", line) for line in config.read_text().splitlines()]
        commands += commands_in("\n".join(lines), command_lines_only=True)
    for tool, arguments in re.findall(r"make (train|bench) ARGS=\"([^\"]*)\"", readme):
        commands.append((tool, ["experiment=quickstart"] * (tool == "train") + shlex.split(arguments)))
    return commands + experiment_commands()


def first_of_sweeps(arguments: list[str]) -> list[str]:
    """The overrides of a command, each sweep (`a,b`, `range(...)`) at its first value."""
    parser = OverridesParser.create()
    overrides = []
    for argument in arguments:
        if argument.startswith("-"):   # -m, --cfg job: Hydra's flags
            continue
        (parsed,) = parser.parse_overrides([argument])
        if parsed.is_sweep_override():
            first = next(iter(parsed.sweep_string_iterator()))
            argument = f"{argument.split('=', 1)[0]}={first}"
        overrides.append(argument)
    return overrides


COMMANDS = shown_commands()


def test_the_readme_shows_commands_of_every_tool():
    assert {tool for tool, _ in COMMANDS} == {"train", "eval", "translate", "bench"} and len(COMMANDS) > 40


@pytest.mark.parametrize("tool,arguments", COMMANDS, ids=[" ".join([tool, *args])[:80] for tool, args in COMMANDS])
def test_a_readme_command_composes(tool, arguments, tmp_path):
    if any(argument in PLUGINS and importlib.util.find_spec(PLUGINS[argument]) is None for argument in arguments):
        pytest.skip("names a launcher plugin this machine does not install")
    try:
        compose_train_cfg(first_of_sweeps(arguments), tmp_path / "run", tmp_path / "data", config_name=tool)
    finally:
        GlobalHydra.instance().clear()
