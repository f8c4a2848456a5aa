"""Every command the documentation shows exists and works.

Commands are collected from README.md and the documentation site's pages (docs/**/*.md; fenced
code blocks and inline code spans) and from the module docstrings of configs/*.py: each
`python -m giftjax...` and `python benchmarks/...` segment (a line may chain several with `&&`).
New commands are picked up as they are written.

- `python -m giftjax.main --config=FILE[:ARG] ...`: FILE exists, `get_config(ARG)` loads, and
  every `--config.key=value` override names an existing key; then the command runs for real in
  a subprocess (JAX_PLATFORMS=cpu) with a temporary work directory, or the short variant that
  SHORT_VARIANTS gives for it.
- `python -m giftjax.plot WORKDIR`: runs for real on a work directory holding a small
  metrics.jsonl written here.
- Any other `python -m giftjax.X`: the module exists and `--help` exits 0; one that takes
  `--config=FILE` (`giftjax.eval`, which needs a trained work directory) also has its config
  loaded and its overrides checked as above.
- `giftjax.export`, like `giftjax.eval`, runs for real after its config's training command.
- Commands in RUN_ELSEWHERE (the LoRA smoke run, which needs the base that two other
  commands build) are run end to end by the test named there.
- `python benchmarks/X.py ...`: the file exists and `--help` exits 0 (HELP_ONLY says why each
  is not run for real).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.e2e]

# A documented command that is too long to run in a test -> the short variant actually run
# (same file and variant, smaller sizes). Keys are the command exactly as documented.
SHORT_VARIANTS = {
    # The trainer recipes: the same config for a few steps (tests/test_train_cli.py runs the
    # smoke recipe's short variant to the end and checks that it learns).
    "python -m giftjax.main --config=configs/smoke_cpu.py --workdir=/tmp/giftjax-smoke": (
        "python -m giftjax.main --config=configs/smoke_cpu.py --workdir=/tmp/giftjax-smoke "
        "--config.train.warmup_sft_steps=2 --config.train.steps=2 --config.eval.every=0 "
        "--config.data.eval_size=8 --config.log.progress=false"
    ),
    "python -m giftjax.main --config=configs/hybrid_gac_cpu.py --workdir=/tmp/giftjax-hybrid": (
        "python -m giftjax.main --config=configs/hybrid_gac_cpu.py --workdir=/tmp/giftjax-hybrid "
        "--config.train.steps=2 --config.eval.every=0 --config.data.eval_size=8 "
        "--config.log.progress=false"
    ),
}
# The LoRA smoke run's base (configs/smoke_cpu.py:base), shorter; giftjax.export runs after it.
_BASE = "python -m giftjax.main --config=configs/smoke_cpu.py:base --workdir=/tmp/giftjax-base"
SHORT_VARIANTS[_BASE] = _BASE + " --config.train.steps=2 --config.checkpoint.every=2"
SHORT_VARIANTS[_BASE.replace("giftjax.main", "giftjax.export")] = SHORT_VARIANTS[_BASE].replace(
    "giftjax.main", "giftjax.export"
)
# Documented commands that read what earlier commands wrote, run end to end by another test.
RUN_ELSEWHERE = {
    "python -m giftjax.main --config=configs/smoke_cpu.py:lora --workdir=/tmp/giftjax-lora": (
        "tests/test_lora_smoke.py runs it on the base that the two commands before it build"
    ),
}
# Why benchmarks are only started with --help: each times many repeats (minutes on a 2-core
# CPU) and writes benchmarks/results; aot_fit and lora_memory compile 7B-32B models for TPU
# topologies through libtpu (minutes to hours, gigabytes of memory).
HELP_ONLY = "timed benchmarks and TPU compiles take minutes to hours; --help checks they start"
# Modules run for real on a work directory (`giftjax.main` aside).
RUN_ON_WORKDIR = {"giftjax.plot"}
# Modules run for real on a trained run: the same config's documented training command (its
# short variant) runs first on the work directory, then the command with the same overrides.
# Named without arguments in prose ("`python -m giftjax.eval` evaluates ..."), they are only
# started with --help like any other module.
RUN_AFTER_TRAINING = {"giftjax.eval", "giftjax.export"}
for _module in RUN_AFTER_TRAINING:
    SHORT_VARIANTS[
        f"python -m {_module} --config=configs/smoke_cpu.py --workdir=/tmp/giftjax-smoke"
    ] = SHORT_VARIANTS[
        "python -m giftjax.main --config=configs/smoke_cpu.py --workdir=/tmp/giftjax-smoke"
    ].replace("giftjax.main", _module)

# A command template in prose ("--config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE]",
# "python -m giftjax...", "python benchmarks/...") shows a form, not a runnable command.
_TEMPLATE = re.compile(r"configs/NAME\.py|\[--|<recipe>|\.\.\.")
_START = re.compile(r"^(?:python3?|\S*/python)\s+(?:-m\s+giftjax\b|benchmarks/)")


def _segments(text: str) -> list[str]:
    """The python commands of a text: lines joined over trailing backslashes, split at shell
    separators, kept when they start with python -m giftjax or python benchmarks/."""
    text = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in text.splitlines():
        line = re.sub(r"\s#.*$", "", line)  # a shell comment after the command
        for part in re.split(r"&&|\|\||;|\|", line):
            part = " ".join(part.split())
            if _START.match(part) and not _TEMPLATE.search(part):
                out.append(part)
    return out


def markdown_commands(path: Path) -> list[str]:
    """The commands of a Markdown file's fenced code blocks and inline code spans."""
    text = path.read_text()
    blocks = re.findall(r"^ *```[^\n]*\n(.*?)^ *```", text, flags=re.S | re.M)
    prose = re.sub(r"^ *```[^\n]*\n.*?^ *```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]+)`", prose)
    return [c for chunk in [*blocks, *spans] for c in _segments(chunk)]


def readme_commands() -> list[str]:
    return markdown_commands(ROOT / "README.md")


DOC_PAGES = sorted((ROOT / "docs").rglob("*.md"))


def docs_commands() -> list[str]:
    return [c for page in DOC_PAGES for c in markdown_commands(page)]


def config_commands() -> list[str]:
    out = []
    for path in sorted((ROOT / "configs").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        out += _segments(doc)
    return out


def documented_commands() -> list[str]:
    return list(dict.fromkeys(readme_commands() + docs_commands() + config_commands()))


COMMANDS = documented_commands()


def _split(command: str) -> tuple[str | None, list[str], str | None]:
    """(module or None, arguments, script or None) of a documented command."""
    words = shlex.split(command)[1:]
    if words[0] == "-m":
        return words[1], words[2:], None
    return None, words[1:], words[0]


def _config_arg(args: list[str]) -> tuple[Path, str | None]:
    for i, a in enumerate(args):
        if a.startswith("--config=") or a == "--config":
            value = a.split("=", 1)[1] if "=" in a else args[i + 1]
            path, _, arg = value.partition(":")
            return ROOT / path, arg or None
    raise AssertionError(f"no --config in {args}")


def _load_config(path: Path, arg: str | None):
    spec = importlib.util.spec_from_file_location(f"_doc_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()


def _checkpoint_of(args: list[str]) -> str:
    """The command's ``model.hf_path`` (its override, else the config's; "" when none)."""
    for a in args:
        if a.startswith("--config.model.hf_path="):
            return a.split("=", 1)[1]
    config = _load_config(*_config_arg(args))
    return config.model.hf_path if "model" in config and "hf_path" in config.model else ""


def _is_placeholder(word: str) -> bool:
    """WORKDIR, DIR or a /tmp path: stands for the run's work directory."""
    return word in ("WORKDIR", "DIR") or word.startswith("/tmp/")


def _substitute(args: list[str], workdir: Path) -> list[str]:
    out = []
    for a in args:
        if a.startswith("--workdir="):  # any value: DIR, /tmp/giftjax-smoke, ...
            a = f"--workdir={workdir}"
        elif not a.startswith("-") and _is_placeholder(a):
            a = str(workdir)
        out.append(a)
    return out


def _run(argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _write_metrics(workdir: Path) -> None:
    """A tiny run's metrics.jsonl, in the documented layout, for commands that read a run."""
    workdir.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "loss": 1.0 / (s + 1), "reward/mean": 0.1 * s} for s in range(5)]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_commands_are_found():
    """The extraction sees the README's run command, the docs pages' commands, the config
    docstrings' launch commands and the benchmarks (a broken extraction would otherwise pass
    by checking nothing)."""
    main = "python -m giftjax.main --config=configs/"
    assert any(c.startswith(main) for c in readme_commands()), readme_commands()
    assert any(c.startswith(main) for c in config_commands()), config_commands()
    assert len(DOC_PAGES) > 10, DOC_PAGES
    docs = docs_commands()
    assert any(c.startswith(main) for c in docs), docs
    assert any(c.startswith("python benchmarks/") for c in docs), docs
    assert any(c.startswith("python -m giftjax.data.prepare") for c in docs), docs
    assert set(SHORT_VARIANTS) <= set(COMMANDS), set(SHORT_VARIANTS) - set(COMMANDS)
    assert set(RUN_ELSEWHERE) <= set(COMMANDS), set(RUN_ELSEWHERE) - set(COMMANDS)


CONFIG_MODULES = ("giftjax.main",)  # takes --config=FILE and --workdir
MAIN = [c for c in COMMANDS if _split(c)[0] in CONFIG_MODULES]
MODULES = [c for c in COMMANDS if _split(c)[0] not in (None, *CONFIG_MODULES)]
SCRIPTS = [c for c in COMMANDS if _split(c)[2] is not None]


# Other modules that take the run's --config (giftjax.eval): the config is checked the same way.
CONFIGURED = [c for c in MODULES if any(a.startswith("--config=") for a in _split(c)[1])]


@pytest.mark.parametrize("command", MAIN + CONFIGURED)
def test_main_config_loads_and_overrides_exist(command):
    _, args, _ = _split(SHORT_VARIANTS.get(command, command))
    path, arg = _config_arg(args)
    assert path.is_file(), f"{command}: {path} does not exist"
    config = _load_config(path, arg)
    for a in args:
        if a.startswith("--config."):
            key = a[len("--config.") :].split("=", 1)[0]
            node = config
            for part in key.split("."):
                assert part in node, f"{command}: override {key!r} names no config key"
                node = node[part]


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    """``train(command) -> (completed process, workdir)``: runs a documented training command
    (its short variant) once per module, so the commands that read its run
    (``RUN_AFTER_TRAINING``, which leave the run as it is) share it."""
    done: dict[str, tuple[subprocess.CompletedProcess, Path]] = {}

    def run(command: str) -> tuple[subprocess.CompletedProcess, Path]:
        if command not in done:
            module, args, _ = _split(SHORT_VARIANTS.get(command, command))
            workdir = tmp_path_factory.mktemp("trained") / "workdir"
            done[command] = (_run(["-m", module, *_substitute(args, workdir)]), workdir)
        return done[command]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("command", MAIN)
def test_main_command_runs(command, train):
    if command in RUN_ELSEWHERE:
        pytest.skip(RUN_ELSEWHERE[command])
    _, args, _ = _split(SHORT_VARIANTS.get(command, command))
    checkpoint = _checkpoint_of(args)
    if checkpoint and not (ROOT / checkpoint).is_dir():
        pytest.skip(
            f"the production recipe trains the local checkpoint {checkpoint} on an accelerator; "
            "tests/test_recipes.py validates it and builds its programs abstractly"
        )
    out, _ = train(command)
    assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"


@pytest.mark.parametrize("command", MODULES)
def test_module_command(command, tmp_path):
    module, args, _ = _split(SHORT_VARIANTS.get(command, command))
    assert importlib.util.find_spec(module) is not None, f"{command}: no module {module}"
    if module in RUN_AFTER_TRAINING and args:
        pytest.skip("run by test_command_on_a_trained_run (slow)")
    if module in RUN_ON_WORKDIR:
        _write_metrics(tmp_path / "workdir")
        out = _run(["-m", module, *_substitute(args, tmp_path / "workdir")])
    else:
        out = _run(["-m", module, "--help"])
        if "Try --helpfull" in out.stdout:  # absl's --help prints the usage, then exits 1
            return
    assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("command", SCRIPTS)
def test_benchmark_script_starts(command):
    """Only --help (see HELP_ONLY): the file exists and its imports and flags parse."""
    _, _, script = _split(command)
    assert (ROOT / script).is_file(), f"{command}: {script} does not exist"
    out = _run([script, "--help"], timeout=300)
    assert out.returncode == 0, f"{command} ({HELP_ONLY})\n{out.stderr[-3000:]}"


AFTER_TRAINING = [c for c in MODULES if _split(c)[0] in RUN_AFTER_TRAINING and _split(c)[1]]


@pytest.mark.slow
@pytest.mark.parametrize("command", AFTER_TRAINING)
def test_command_on_a_trained_run(command, train):
    module, args, _ = _split(SHORT_VARIANTS.get(command, command))
    documented = _split(command)[1]
    training = " ".join(["python -m giftjax.main", *documented])
    assert training in COMMANDS, f"{command}: its training command {training!r} is not documented"
    _, train_args, _ = _split(SHORT_VARIANTS.get(training, training))
    assert train_args == args, f"{command}: run it with the overrides of {training!r}"
    out, workdir = train(training)
    assert out.returncode == 0, f"{training}\n{out.stderr[-3000:]}"
    out = _run(["-m", module, *_substitute(args, workdir)])
    assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
