"""The README and docs/ are tested: every command block runs here at a tiny size, or is marked as needing
real data / a long run and then still has to parse (docs/testing.md, "How the docs are tested").

Blocks are fenced code with info string ``bash`` / ``sh`` / ``shell`` / ``console`` (commands) or ``python``
in README.md and docs/**/*.md. The line just before a fence may carry a marker::

    <!-- docs-test: slow -->                       run in the slow lane (@pytest.mark.slow)
    <!-- docs-test: run -->                        a python block: run it (fast lane); unmarked python blocks
                                                   are API sketches whose imports are checked
    <!-- docs-test: needs real data -->            not run (any reason after "needs")
    <!-- docs-test: long (make demo, 24 min) -->   not run (the reason in parentheses is required)
    ...; expect "TEXT"                             the block's output must contain TEXT (with slow / run)

Unmarked command blocks run in the fast lane. Every block, run or not, is parsed: each ``python -m
experiments.X`` / ``benchmarks.X`` line must be accepted by that module's own argument parser (its ``main``
is called with ``parse_args`` stopped right after parsing), a ``train`` line's config must load with its
overrides (and the model be built when they touch ``model.*`` / ``input_spec.*``), ``make`` lines must
name Makefile targets and ``pytest`` lines existing files. Runnable blocks see ``DATA/CVUSA`` /
``DATA/CVACT`` replaced by tiny synthetic worlds (PLACEHOLDERS below) and run line by line in a temporary
folder per page, ``python`` being this interpreter with the repository root on ``PYTHONPATH``.

The pages themselves are checked too: README length and contents table, each page's first paragraph,
relative links and anchors, repository paths and dotted names written in backticks.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import glob
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from unittest import mock

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = os.path.join(ROOT, "docs")
README_MAX_LINES = 250

SHELL_LANGS = {"bash", "sh", "shell", "console"}
PAGE_INTRO = re.compile(r"^With this page you can \w")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([^\s`]*)\s*$")

# the tiny worlds that stand in for the real datasets in runnable blocks (documented in docs/testing.md)
PLACEHOLDERS = {
    "DATA/CVUSA": ["--layout", "cvusa", "--seed", "0", "--train", "24", "--val", "16", "--aerial-size", "128",
                   "--pano-size", "32x176", "--no-sheet"],
    "DATA/CVACT": ["--layout", "cvact", "--seed", "0", "--train", "8", "--val", "8", "--test", "4",
                   "--aerial-size", "128", "--pano-size", "64x128", "--no-sheet"],
}
# commands run inside this process (no TensorFlow start-up per line: they change no process-wide state);
# everything else (train: op determinism, mixed precision; the data writers: worker pools) runs in a
# subprocess
IN_PROCESS = {"experiments.summary", "experiments.families", "experiments.parity", "experiments.visualize",
              "experiments.evaluate", "experiments.export", "experiments.index", "experiments.localize"}
# commands the other half of the refactor adds; a missing one skips (with this reason) instead of failing
NEW_COMMANDS = {"experiments.visualize": "replaces show_attention / show_descriptors",
                "experiments.families": "lists the registered families"}
LINE_TIMEOUT_S = 900


# ------------------------------------------------------------------------------------------------ parsing
@dataclasses.dataclass
class Block:
    page: str  # path relative to ROOT
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str = ""  # the marker text, "" when none

    @property
    def kind(self) -> str:
        """run | slow | skip (needs / long) | sketch (unmarked python) | output (anything else) | bad."""
        head = re.split(r";\s*(?=expect\b)", self.marker)[0].strip()
        if self.lang in SHELL_LANGS:
            if head in ("", "run"):
                return "run"
        elif self.lang == "python":
            if head == "run":
                return "run"
            if head == "":
                return "sketch"
        else:
            return "output"
        if head == "slow":
            return "slow"
        if head.startswith("needs ") or re.match(r"^long \(.+\)$", head):
            return "skip"
        return "bad"

    @property
    def expects(self) -> list:
        return re.findall(r'expect\s+"([^"]+)"', self.marker)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list:
    """README.md and every page under docs/ (docs/spec/ included), as paths relative to ROOT."""
    found = sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))
    return ["README.md"] + [os.path.relpath(p, ROOT) for p in found]


def top_pages() -> list:
    """The pages of docs/ itself (each with its 'With this page you can' paragraph)."""
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(DOCS, "*.md")))


@lru_cache(maxsize=None)
def read(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding="utf-8") as fh:
        return fh.read()


@lru_cache(maxsize=None)
def parse_page(page: str) -> tuple:
    """(blocks, prose lines with their numbers, problems) of one page."""
    lines = read(page).split("\n")
    blocks, prose, problems = [], [], []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        indent, fence, lang = m.groups()
        start = i
        body = []
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{re.escape(fence[0]) * len(fence)}\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        if i == len(lines):
            problems.append(f"{page}:{start + 1}: fence never closed")
        i += 1
        marker = ""
        if start > 0:
            mm = MARKER.match(lines[start - 1])
            if mm:
                marker = mm.group(1)
        if not lang:
            problems.append(f"{page}:{start + 1}: fence without an info string (use bash for commands, text "
                            "for output)")
        blocks.append(Block(page, start + 1, lang.lower(), "\n".join(body), marker))
    for n, text in prose:
        if MARKER.match(text):
            nxt = lines[n] if n < len(lines) else ""
            if not FENCE.match(nxt):
                problems.append(f"{page}:{n}: docs-test marker not directly above a fence")
    return tuple(blocks), tuple(prose), tuple(problems)


def all_blocks() -> list:
    return [b for p in pages() for b in parse_page(p)[0]]


def logical_lines(block: Block) -> list:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    raw = block.text.split("\n")
    if block.lang == "console":
        raw = [ln[2:] for ln in raw if ln.startswith("$ ")]
    out, cur = [], ""
    for ln in raw:
        if ln.rstrip().endswith("\\"):
            cur += ln.rstrip()[:-1] + " "
            continue
        cur += ln
        if cur.strip() and not cur.strip().startswith("#"):
            out.append(cur.strip())
        cur = ""
    if cur.strip():
        out.append(cur.strip())
    return out


@dataclasses.dataclass
class Command:
    env: dict  # NAME=value prefixes (and exports seen earlier in the block)
    program: str  # python | make | pytest | export | other
    module: str = ""
    argv: list = dataclasses.field(default_factory=list)


def split_command(line: str, env: dict) -> Command:
    tokens = shlex.split(line, comments=True)
    env = dict(env)
    if tokens and tokens[0] == "export":
        for t in tokens[1:]:
            name, _, value = t.partition("=")
            env[name] = value
        return Command(env, "export", argv=tokens[1:])
    while tokens and re.match(r"^[A-Za-z_]\w*=", tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        env[name] = value
    while tokens and tokens[0] in ("nice", "time"):
        tokens.pop(0)
        if tokens and tokens[0] == "-n":
            tokens = tokens[2:]
    if not tokens:
        return Command(env, "other")
    prog = os.path.basename(tokens[0])
    if prog in ("python", "python3") and len(tokens) > 2 and tokens[1] == "-m":
        if tokens[2] == "pytest":
            return Command(env, "pytest", "pytest", tokens[3:])
        return Command(env, "python", tokens[2], tokens[3:])
    if prog == "pytest":
        return Command(env, "pytest", "pytest", tokens[1:])
    if prog == "cvgl" and len(tokens) > 1 and not tokens[1].startswith("-"):  # cvgl CMD = python -m experiments.CMD
        return Command(env, "python", "experiments." + tokens[1].replace("-", "_"), tokens[2:])
    if prog == "make":
        return Command(env, "make", argv=tokens[1:])
    return Command(env, "other", argv=tokens)


def commands(block: Block) -> list:
    env, out = {}, []
    for line in logical_lines(block):
        cmd = split_command(line, env)
        if cmd.program == "export":
            env = cmd.env
        out.append((line, cmd))
    return out


# ------------------------------------------------------------------------------------------ the checks
class _Parsed(Exception):
    pass


class _Sink(io.StringIO):
    """A captured stdout / stderr that also takes ``reconfigure`` (some commands set line buffering)."""

    def reconfigure(self, **kwargs):
        pass


def module_file(name: str):
    base = os.path.join(ROOT, *name.split("."))
    for cand in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(cand):
            return cand
    return None


def parse_with_module(module: str, argv: list):
    """The argparse namespace ``module``'s own ``main`` builds from ``argv`` (None for --help); raises
    AssertionError with the parser's message when it refuses the line."""
    mod = importlib.import_module(module)
    assert hasattr(mod, "main"), f"{module} has no main(argv)"
    original = argparse.ArgumentParser.parse_args

    def stop_after_parsing(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    err = _Sink()
    with mock.patch.object(argparse.ArgumentParser, "parse_args", stop_after_parsing), \
            contextlib.redirect_stderr(err), contextlib.redirect_stdout(_Sink()):
        try:
            mod.main(list(argv))
        except _Parsed as parsed:
            return parsed.args[0]
        except SystemExit as exc:
            if exc.code in (0, None):
                return None
            raise AssertionError(f"{module} refuses {shlex.join(argv)}: {err.getvalue().strip()}") from None
    raise AssertionError(f"{module}.main returned without parsing its arguments")


def makefile_targets() -> set:
    with open(os.path.join(ROOT, "Makefile")) as fh:
        return {m.group(1) for m in re.finditer(r"^([\w.-]+)\s*:(?!=)", fh.read(), re.M)}


def check_train_line(ns, env: dict) -> None:
    """The config of a train line loads and its overrides resolve; with model / input-spec overrides the
    model is built (a refused key, or a geometry the family rejects, fails here)."""
    from common.models import registry
    from common.models.config import build_model, load_config
    from common.training import recipe

    if env.get("CVGL_FAMILIES"):
        registry.add_family_modules(env["CVGL_FAMILIES"].split(","))
    config = ns.config
    if not os.path.isabs(config) and os.path.isfile(os.path.join(ROOT, config)):
        config = os.path.join(ROOT, config)
    cfg = load_config(config)
    overrides = recipe.parse_overrides(ns.overrides)
    cfg, _ = recipe.resolve(cfg, overrides, cli={})
    if any(str(k).startswith(("model.", "input_spec.")) for k, _ in overrides):
        cfg = copy.deepcopy(cfg)
        if cfg["model"].get("backbone_weights") == "imagenet":
            cfg["model"].pop("backbone_weights")  # no ImageNet file is needed to check the architecture
        build_model(cfg)


def check_block_parses(block: Block) -> list:
    """Problems of one block's command lines (empty when all parse); skips for a missing new command."""
    problems, skips = [], []
    for line, cmd in commands(block):
        if cmd.program == "make":
            missing = [t for t in cmd.argv if not t.startswith("-") and "=" not in t
                       and t not in makefile_targets()]
            if missing:
                problems.append(f"{block.where}: make target(s) {missing} not in the Makefile")
        elif cmd.program == "pytest":
            for t in cmd.argv:
                if t.endswith(".py") or t.startswith("tests/"):
                    if not glob.glob(os.path.join(ROOT, t.split("::")[0])):
                        problems.append(f"{block.where}: pytest path {t} does not exist")
        elif cmd.program == "python":
            if not cmd.module.startswith(("experiments.", "benchmarks.")):
                problems.append(f"{block.where}: python -m {cmd.module}: only experiments.* / benchmarks.* "
                                "commands are documented")
                continue
            if module_file(cmd.module) is None:
                if cmd.module in NEW_COMMANDS:
                    skips.append(f"{cmd.module} does not exist yet ({NEW_COMMANDS[cmd.module]})")
                else:
                    problems.append(f"{block.where}: no module {cmd.module} (line: {line})")
                continue
            try:
                ns = parse_with_module(cmd.module, cmd.argv)
                if cmd.module == "experiments.train" and ns is not None:
                    check_train_line(ns, cmd.env)
            except Exception as exc:  # noqa: BLE001 - every failure of a documented line is reported
                problems.append(f"{block.where}: {line}\n    -> {type(exc).__name__}: {exc}")
    if skips and not problems:
        pytest.skip("; ".join(sorted(set(skips))))
    return problems


def check_python_imports(block: Block) -> list:
    import ast

    problems = []
    try:
        tree = ast.parse(block.text)
    except SyntaxError as exc:
        return [f"{block.where}: python block does not parse: {exc}"]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                try:
                    importlib.import_module(alias.name)
                except ImportError as exc:
                    problems.append(f"{block.where}: import {alias.name}: {exc}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            try:
                mod = importlib.import_module(node.module)
            except ImportError as exc:
                problems.append(f"{block.where}: from {node.module} import ...: {exc}")
                continue
            for alias in node.names:
                if not hasattr(mod, alias.name) and module_file(f"{node.module}.{alias.name}") is None:
                    problems.append(f"{block.where}: {node.module} has no {alias.name}")
    return problems


# ---------------------------------------------------------------------------------------- running blocks
@pytest.fixture(scope="session")
def data_worlds(tmp_path_factory):
    """DATA/CVUSA and DATA/CVACT: tiny synthetic worlds in the real layouts, written once per session."""
    root = tmp_path_factory.mktemp("docs_data")
    out = {}
    for placeholder, args in PLACEHOLDERS.items():
        path = os.path.join(str(root), placeholder.split("/")[1])
        subprocess.run([sys.executable, "-m", "experiments.synth", "--out", path, *args], cwd=ROOT,
                       env=run_env({}), check=True, capture_output=True, timeout=LINE_TIMEOUT_S)
        out[placeholder] = path
    return out


def run_env(extra: dict) -> dict:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env.update(extra)
    return env


def substitute(line: str, worlds: dict) -> str:
    for placeholder, path in worlds.items():
        line = re.sub(rf"(?<![\w/.]){re.escape(placeholder)}(?![\w])", path, line)
    return line


@contextlib.contextmanager
def in_dir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_in_process(module: str, argv: list, cwd: str) -> str:
    mod = importlib.import_module(module)
    out = _Sink()
    with in_dir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            rc = mod.main(list(argv))
        except SystemExit as exc:
            rc = exc.code
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"python -m {module} {shlex.join(argv)} failed: {type(exc).__name__}: "
                                 f"{exc}\n{out.getvalue()[-3000:]}") from None
    assert rc in (0, None), f"python -m {module} {shlex.join(argv)} exited {rc}:\n{out.getvalue()[-3000:]}"
    return out.getvalue()


def run_block(block: Block, cwd: str, worlds: dict) -> str:
    """Run one runnable block in ``cwd``; returns its output (checked against the block's expects)."""
    if block.lang == "python":
        out = _Sink()
        src = block.text
        for placeholder, path in worlds.items():
            src = src.replace(placeholder, path)
        with in_dir(cwd), contextlib.redirect_stdout(out):
            try:
                exec(compile(src, block.where, "exec"), {"__name__": "__docs__"})  # noqa: S102
            except Exception as exc:  # noqa: BLE001
                raise AssertionError(f"{block.where}: python block failed: {type(exc).__name__}: "
                                     f"{exc}") from None
        text = out.getvalue()
    else:
        from common.models import registry

        env, chunks = {}, []
        known = set(registry.families())
        try:
            for line in logical_lines(block):
                line = substitute(line, worlds)
                cmd = split_command(line, env)
                if cmd.program == "export":
                    env = cmd.env
                    continue
                if cmd.program == "python" and cmd.module in NEW_COMMANDS and module_file(cmd.module) is None:
                    pytest.skip(f"{cmd.module} does not exist yet ({NEW_COMMANDS[cmd.module]})")
                plain = not re.search(r"[|<>;&$`]", line) and set(cmd.env) <= {"CVGL_FAMILIES"}
                if cmd.program == "python" and cmd.module in IN_PROCESS and plain:
                    if cmd.env.get("CVGL_FAMILIES"):  # what experiments/__init__.py does with the variable
                        registry.add_family_modules(cmd.env["CVGL_FAMILIES"].split(","))
                    chunks.append(run_in_process(cmd.module, cmd.argv, cwd))
                    continue
                proc = subprocess.run(["bash", "-c", line], cwd=cwd, env=run_env(env), capture_output=True,
                                      text=True, timeout=LINE_TIMEOUT_S)
                chunks.append(proc.stdout + proc.stderr)
                assert proc.returncode == 0, (f"{block.where}: `{line}` exited {proc.returncode}:\n"
                                              f"{(proc.stdout + proc.stderr)[-4000:]}")
        finally:
            for name in set(registry.families()) - known:  # leave the registry as the other tests expect it
                registry.unregister_family(name)
        text = "\n".join(chunks)
    for want in block.expects:
        assert want in text, f"{block.where}: output lacks {want!r}:\n{text[-4000:]}"
    return text


def page_ids(kinds) -> list:
    return [p for p in pages() if any(b.kind in kinds for b in parse_page(p)[0])]


# ---------------------------------------------------------------------------------------------- the tests
def test_readme_is_short_and_links_every_page():
    text = read("README.md")
    n = len(text.rstrip("\n").split("\n"))
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move detail to docs"
    for cmd in ("make setup", "make demo", "make test"):
        assert cmd in text, f"README.md does not show `{cmd}`"
    assert "## The full path on real data" in text
    linked = {os.path.normpath(t.split("#")[0]) for t in re.findall(r"\]\(([^)]+)\)", text)}
    wanted = top_pages() + ["docs/spec/README.md"]
    missing = [p for p in wanted if os.path.normpath(p) not in linked]
    assert not missing, f"README.md does not link {missing} (its contents table should)"
    assert len(top_pages()) >= 8, f"expected one page per area under docs/, found {top_pages()}"


@pytest.mark.parametrize("page", top_pages())
def test_page_says_what_the_reader_can_do(page):
    lines = read(page).split("\n")
    assert lines[0].startswith("# "), f"{page} must start with a '# Title' line"
    para = []
    for ln in lines[1:]:
        if not ln.strip():
            if para:
                break
            continue
        para.append(ln.strip())
    first = " ".join(para)
    assert PAGE_INTRO.match(first), (f"{page}: the first paragraph must say what the reader can do with the "
                                     f"page ('With this page you can ...'); it is: {first[:120]!r}")


@pytest.mark.parametrize("page", pages())
def test_fences_and_markers_are_well_formed(page):
    blocks, _, problems = parse_page(page)
    problems = list(problems)
    for b in blocks:
        kind = b.kind
        if kind == "bad":
            problems.append(f"{b.where}: unknown docs-test marker {b.marker!r} (known: slow, run, needs ..., "
                            "long (...))")
            continue
        if b.expects and kind not in ("run", "slow"):
            problems.append(f"{b.where}: expect \"...\" only makes sense on a block that runs")
        if kind == "output":
            for ln in b.text.split("\n"):
                if re.match(r"^\s*(\$ )?(python3? -m |make |\.venv/)", ln):
                    problems.append(f"{b.where}: a command in a {b.lang or 'bare'} block ({ln.strip()!r}); "
                                    "fence commands as bash")
    assert not problems, "\n".join(problems)


def _slug(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(page: str) -> frozenset:
    seen, out = {}, set()
    for _, ln in parse_page(page)[1]:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", ln)
        if m:
            s = _slug(m.group(1))
            k = seen.get(s, 0)
            seen[s] = k + 1
            out.add(s if k == 0 else f"{s}-{k}")
    return frozenset(out)


@pytest.mark.parametrize("page", pages())
def test_links_and_anchors_resolve(page):
    problems = []
    for n, ln in parse_page(page)[1]:
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", ln)):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(os.path.join(ROOT, dest)):
                problems.append(f"{page}:{n}: link to {target}: {dest} does not exist")
            elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
                problems.append(f"{page}:{n}: link to {target}: no heading #{anchor} in {dest}")
    assert not problems, "\n".join(problems)


PATH_SPAN = re.compile(r"^(?:common|geodtr_tf|mgtl_tf|experiments|benchmarks|tests|docs|\.ci)/[\w./*-]*$|"
                       r"^(?:Makefile|pyproject\.toml|requirements(?:-gpu)?\.txt)$")
DOTTED_SPAN = re.compile(r"^((?:common|geodtr_tf|mgtl_tf|experiments|benchmarks|tests)(?:\.\w+)+)(?:\(.*)?$")


@pytest.mark.parametrize("page", pages())
def test_paths_and_names_in_backticks_exist(page):
    problems = []
    for n, ln in parse_page(page)[1]:
        for span in re.findall(r"`([^`]+)`", ln):
            span = span.strip()
            if "..." in span or re.search(r"\.[A-Z]$", span):
                continue  # a pattern (`common/...`, `experiments.X`), not a name
            if PATH_SPAN.match(span):
                if not glob.glob(os.path.join(ROOT, span.rstrip("/"))):
                    problems.append(f"{page}:{n}: `{span}` does not exist")
                continue
            m = DOTTED_SPAN.match(span)
            if m:
                problem = dotted_name_problem(m.group(1))
                if problem:
                    problems.append(f"{page}:{n}: `{span}`: {problem}")
        for name in re.findall(r"(?<![\w/.-])((?:experiments|benchmarks)\.(?!md\b|py\b)[a-z_]+)\b", ln):
            if module_file(name) is None and name not in NEW_COMMANDS:
                problems.append(f"{page}:{n}: {name} is not a module")
    assert not problems, "\n".join(problems)


def dotted_name_problem(dotted: str):
    """None when ``dotted`` (a module, or a module plus attributes) exists; else what is wrong."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        if module_file(".".join(parts[:i])) is not None:
            break
    else:
        return "no such module"
    try:
        obj = importlib.import_module(".".join(parts[:i]))
    except Exception as exc:  # noqa: BLE001
        return f"does not import ({type(exc).__name__}: {exc})"
    for attr in parts[i:]:
        if not hasattr(obj, attr):
            return f"{obj.__name__ if hasattr(obj, '__name__') else obj} has no {attr}"
        obj = getattr(obj, attr)
    return None


@pytest.mark.parametrize("page", page_ids({"run", "slow", "skip"}))
def test_every_command_parses(page):
    problems = []
    for b in parse_page(page)[0]:
        if b.lang in SHELL_LANGS:
            problems += check_block_parses(b)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", page_ids({"sketch", "run", "slow"}))
def test_python_blocks_import(page):
    problems = []
    for b in parse_page(page)[0]:
        if b.lang == "python":
            problems += check_python_imports(b)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", page_ids({"run"}))
def test_runnable_blocks_run(page, tmp_path, data_worlds):
    for b in parse_page(page)[0]:
        if b.kind == "run":
            run_block(b, str(tmp_path), data_worlds)


@pytest.mark.slow
@pytest.mark.parametrize("page", page_ids({"slow"}))
def test_slow_blocks_run(page, tmp_path, data_worlds):
    """The page's runnable blocks in order, the slow ones included (a slow block may use what an earlier
    block wrote)."""
    for b in parse_page(page)[0]:
        if b.kind in ("run", "slow"):
            run_block(b, str(tmp_path), data_worlds)


def test_every_command_block_is_run_or_marked():
    """No block escapes: each is run (fast or slow) or carries a reason; and both lanes have work."""
    kinds = {}
    for b in all_blocks():
        if b.lang in SHELL_LANGS or b.lang == "python":
            kinds.setdefault(b.kind, []).append(b.where)
    assert not kinds.get("bad"), f"blocks with an unknown marker: {kinds['bad']}"
    assert kinds.get("run") and kinds.get("slow") and kinds.get("skip"), kinds
    skipped = [b for b in all_blocks() if b.lang in SHELL_LANGS and b.kind == "skip"]
    assert all(commands(b) for b in skipped), "a marked block without any command"
