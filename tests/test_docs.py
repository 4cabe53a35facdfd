"""README.md and docs/*.md: the commands they show run as written, their links lead somewhere, and
each page has one title.

Running every command would take hours, so the short ones are checked instead: each
``python train.py|sample.py|evaluate.py`` flag exists (read from the script's ``--helpfull``), each
``--config.a.b`` key exists in the config file named, each ``python -m`` module and each script
exists, each repository path named exists, and each ``pip install`` extra is declared.
"""

import functools
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.join("docs", name) for name in os.listdir(os.path.join(REPO, "docs"))
                               if name.endswith(".md"))
SCRIPTS_WITH_FLAGS = ("train.py", "sample.py", "evaluate.py")
REPO_PATH = re.compile(r"^(configs|docs|ddim_jax|benchmarks|tests)/[\w./-]+$")
FENCE = re.compile(r"^```(\w*)\s*$")


def _read(page: str) -> str:
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
        return f.read()


def _split_fences(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """([(language, code)] of the fenced blocks, [the lines outside them])."""
    blocks, prose, language, code = [], [], None, []
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence and language is None:
            language, code = fence.group(1), []
        elif fence and language is not None and not fence.group(1):
            blocks.append((language, "\n".join(code)))
            language = None
        elif language is not None:
            code.append(line)
        else:
            prose.append(line)
    return blocks, prose


def _commands(page: str) -> list[list[str]]:
    """Every shell command of the page: bash blocks (continuations joined, comments dropped, split at
    ``&&``) and inline code spans that start with ``python `` or ``pip install``."""
    blocks, prose = _split_fences(_read(page))
    lines = []
    for language, code in blocks:
        if language in ("bash", "sh", "shell"):
            lines += code.replace("\\\n", " ").splitlines()
    lines += [span for line in prose for span in re.findall(r"`((?:python|pip install) [^`]+)`", line)]
    commands = []
    for line in lines:
        tokens = shlex.split(line, comments=True)
        while tokens:
            end = tokens.index("&&") if "&&" in tokens else len(tokens)
            commands.append(tokens[:end])
            tokens = tokens[end + 1:]
    return [command for command in commands if command]


def _all_commands() -> list[tuple[str, list[str]]]:
    return [(page, command) for page in PAGES for command in _commands(page)]


@functools.cache
def _script_flags(script: str) -> frozenset[str]:
    """The absl flag names ``python <script> --helpfull`` lists (booleans also as ``no<name>``)."""
    result = subprocess.run([sys.executable, script, "--helpfull"], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    names = set()
    for negatable, name in re.findall(r"^\s+--(\[no\])?([\w.-]+)", result.stdout, re.MULTILINE):
        names.add(name)
        if negatable:
            names.add("no" + name)
    assert "workdir" in names, result.stdout + result.stderr
    return frozenset(names)


def _check_config_key(config_file: str, key: str) -> None:
    module = importlib.import_module(config_file.removesuffix(".py").replace("/", "."))
    node = module.get_config()
    for part in key.split(".")[1:]:
        assert part in node, f"--{key}: {part!r} is not a key of {config_file}"
        node = node[part]


def _check_python(command: list[str]) -> None:
    args = command[1:]
    if args[0] == "-c":
        return
    if args[0] == "-m":
        assert importlib.util.find_spec(args[1]) is not None, f"no module {args[1]}"
        return
    script = args[0]
    assert os.path.isfile(os.path.join(REPO, script)), f"no script {script}"
    if script not in SCRIPTS_WITH_FLAGS:
        return
    known = _script_flags(script)
    config_file = args[args.index("--config") + 1] if "--config" in args else None
    for arg in args[1:]:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0]
        if name.startswith("config.") and script == "train.py":
            _check_config_key(config_file, name)
            continue
        if script != "train.py":  # sample.py and evaluate.py also accept dashed spellings
            name = name.replace("-", "_")
            name = "no" + name[3:] if name.startswith("no_") else name
        assert name in known, f"{script} has no flag --{name}"


def _check_pip(command: list[str]) -> None:
    section = _read("pyproject.toml").split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^([\w-]+) = \[", section, re.MULTILINE))
    assert {"dev", "cuda12"} <= extras, extras
    for arg in command[2:]:
        match = re.fullmatch(r"\.\[([\w,-]+)\]", arg)
        if match:
            assert set(match.group(1).split(",")) <= extras, f"unknown extra in {arg}"


@pytest.mark.parametrize("page, command", _all_commands(), ids=lambda value: " ".join(value)[:60]
                         if isinstance(value, list) else value)
def test_each_documented_command_is_runnable_as_written(page, command):
    while command and re.fullmatch(r"[A-Z_]+=\S*", command[0]):   # VAR=value prefixes
        command = command[1:]
    for arg in command:
        for path in (arg, arg.split("=", 1)[-1]):
            if REPO_PATH.match(path):
                assert os.path.exists(os.path.join(REPO, path)), f"{page}: {' '.join(command)}: no {path}"
    if command[0] in ("python", "python3") and len(command) > 1:
        _check_python(command)
    elif command[:2] == ["pip", "install"]:
        _check_pip(command)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(page: str) -> list[tuple[int, str]]:
    _, prose = _split_fences(_read(page))
    return [(len(m.group(1)), m.group(2)) for line in prose if (m := re.match(r"^(#+)\s+(.*)$", line))]


@pytest.mark.parametrize("page", PAGES)
def test_links_lead_to_files_and_headings_that_exist(page):
    _, prose = _split_fences(_read(page))
    for target in re.findall(r"\]\(([^)\s]+)\)", "\n".join(prose)):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        assert os.path.exists(os.path.join(REPO, resolved)), f"{page}: broken link {target}"
        if anchor:
            anchors = {_anchor(text) for _, text in _headings(resolved)}
            assert anchor in anchors, f"{page}: no heading #{anchor} in {resolved}"


@pytest.mark.parametrize("page", PAGES)
def test_each_page_has_one_title_and_sections_below_it(page):
    headings = _headings(page)
    assert _read(page).startswith("# ") and [level for level, _ in headings].count(1) == 1, headings
    titles = [text for _, text in headings]
    assert len(set(titles)) == len(titles), f"{page}: a heading appears twice: {titles}"
    for (level, text), (next_level, next_text) in zip(headings, headings[1:]):
        assert next_level <= level + 1, f"{page}: {next_text!r} (level {next_level}) under {text!r} (level {level})"


def test_the_quick_start_installs_the_main_job_only_and_the_tests_install_the_dev_extra():
    blocks = [code for language, code in _split_fences(_read("README.md"))[0] if language == "bash"]
    assert "pip install -e . " in blocks[0] and "[dev]" not in blocks[0]     # the main job: no PyTorch
    assert 'pip install -e ".[dev]"' in blocks[1] and "pytest" in blocks[1]
    assert 'pip install -q -e ".[dev]"' in _read(".ci/run")
