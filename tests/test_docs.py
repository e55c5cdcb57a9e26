"""Every example in README.md and docs/*.md is checked, so the documentation cannot drift.

- Each fenced ```python block runs, in a scratch directory. Its first line may name a fixture,
  `# fixture: NAME` (see FIXTURES), that prepares files the block uses: a tiny random checkpoint at
  runs/demo/stage2, point files, a running server. A block that must not run says so on its first
  line, `# doc: not-run (reason)`; it is still compiled, and like every block its `pointllm`
  imports and attributes are checked against the package.
- Each line of a ```bash / ```sh / ```shell / ```console block that calls `pointllm` is parsed by
  the real parser of the `pointllm` command (`pointllm train` lines by the training-argument
  parser, recipe included), and `python scripts/X.py` lines by the script's `build_parser()`.
- Relative links point at files (and headings) that exist; pictures stay under 300 KB.

docs/development.md describes the conventions for writers.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
FIXTURE_RE = re.compile(r"#\s*fixture:\s*([\w-]+)")
NOT_RUN_RE = re.compile(r"#\s*doc:\s*not-run\b\s*(.*)")
SHELL_OPERATORS = {"&&", "||", "|", ";"}
MAX_IMAGE_BYTES = 300 * 1024
DEMO_POINTS = "runs/demo/synth/points"
SERVER_ADDRESS = "127.0.0.1:8000"  # what the docs write; the fixture's server listens elsewhere


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def name(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"

    @property
    def first_line(self) -> str:
        return self.text.lstrip("\n").split("\n", 1)[0].strip()


def fenced_blocks(text: str, path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown text (``` or ~~~ fences, info string = language)."""
    blocks, fence, lang, start, body = [], None, "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            match = re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if match:
                fence, lang, start, body = match.group(1), match.group(2).lower(), number, []
        elif stripped.startswith(fence) and stripped.strip(fence[0]) == "":
            blocks.append(Block(path, start, lang, "\n".join(body)))
            fence = None
        else:
            body.append(line)
    if fence is not None:
        raise AssertionError(f"{path}:{start}: code block is never closed")
    return blocks


def all_blocks() -> list[Block]:
    return [b for path in DOC_FILES for b in fenced_blocks(path.read_text(), path)]


# ---- python blocks: static check ---------------------------------------------------------------


def check_pointllm_names(code: str, name: str = "<doc>") -> list[str]:
    """Problems with the pointllm API a Python snippet uses: modules that do not import, names
    they do not define, attributes (one level) of imported pointllm objects that do not exist."""
    tree = ast.parse(code, name)
    problems: list[str] = []
    bound: dict[str, object] = {}  # local name -> the pointllm object it refers to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "pointllm":
                    continue
                try:
                    module = importlib.import_module(alias.name)
                except ImportError as exc:
                    problems.append(f"line {node.lineno}: import {alias.name}: {exc}")
                    continue
                if alias.asname:
                    bound[alias.asname] = module
                else:
                    bound["pointllm"] = importlib.import_module("pointllm")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pointllm":
            try:
                module = importlib.import_module(node.module)
            except ImportError as exc:
                problems.append(f"line {node.lineno}: from {node.module}: {exc}")
                continue
            for alias in node.names:
                try:
                    value = getattr(module, alias.name)
                except AttributeError:
                    try:
                        value = importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        problems.append(f"line {node.lineno}: {node.module} has no {alias.name!r}")
                        continue
                bound[alias.asname or alias.name] = value
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
        ):
            owner = bound[node.value.id]
            if not hasattr(owner, node.attr):
                try:  # a submodule not imported yet (pointllm.data.io)
                    importlib.import_module(f"{owner.__name__}.{node.attr}")
                except (AttributeError, ImportError):
                    problems.append(
                        f"line {node.lineno}: {node.value.id}.{node.attr} does not exist"
                    )
    return problems


def block_mode(block: Block) -> tuple[str, str]:
    """('run', fixture name or '') or ('not-run', reason)."""
    first = block.first_line
    not_run = NOT_RUN_RE.match(first)
    if not_run:
        reason = not_run.group(1).strip()
        if not (reason.startswith("(") and reason.endswith(")") and len(reason) > 2):
            raise AssertionError(f"{block.name}: `# doc: not-run` needs a reason: (why)")
        return "not-run", reason
    fixture = FIXTURE_RE.match(first)
    if fixture:
        if fixture.group(1) not in FIXTURES:
            raise AssertionError(
                f"{block.name}: unknown fixture {fixture.group(1)!r}; known: {sorted(FIXTURES)}"
            )
        return "run", fixture.group(1)
    return "run", ""


# ---- python blocks: fixtures -------------------------------------------------------------------


def write_ply(path: Path, points: np.ndarray) -> None:
    """An ascii PLY of (N, 6) xyz + rgb in [0, 1], colors as uchar."""
    header = (
        f"ply\nformat ascii 1.0\nelement vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    rows = [
        f"{x:.5f} {y:.5f} {z:.5f} {round(r * 255)} {round(g * 255)} {round(b * 255)}"
        for x, y, z, r, g, b in points
    ]
    path.write_text(header + "\n".join(rows) + "\n")


def colored_cloud(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3)) * np.array([1.0, 0.5, 0.3])
    return np.concatenate([xyz, rng.random((n, 3))], axis=1).astype(np.float32)


class DocWorld:
    """Scratch directories the blocks run in, built on first use and shared by the session."""

    def __init__(self, root: Path, base_tokenizer):
        self.root = root
        self.base_tokenizer = base_tokenizer
        self._built: dict[str, Path] = {}
        self.server_port: int | None = None
        self._server = None

    def directory(self, fixture: str) -> Path:
        if fixture not in self._built:
            path = self.root / (fixture or "plain")
            path.mkdir()
            (path / "configs").symlink_to(ROOT / "configs")  # recipes, read-only
            FIXTURES[fixture](self, path)
            self._built[fixture] = path
        return self._built[fixture]

    def add_points(self, path: Path) -> None:
        np.save(path / "my_object.npy", colored_cloud(2048, seed=1))
        write_ply(path / "my_object.ply", colored_cloud(1500, seed=2))

    def add_checkpoint(self, path: Path) -> None:
        from pointllm.model.pointllm import save_pointllm

        self.add_points(path)
        # qwen2: an untied random head gives varied tokens, so answers are not empty.
        model, tokenizer = make_tiny_model(self.base_tokenizer, arch="qwen2", num_points=256)
        save_pointllm(model, tokenizer, path / "runs" / "demo" / "stage2")
        points = path / DEMO_POINTS
        points.mkdir(parents=True)
        for index in (2, 3):
            np.save(points / f"synth_{index:06d}_8192.npy", colored_cloud(8192, seed=index))

    def start_server(self, path: Path) -> None:
        import uvicorn

        import pointllm
        from pointllm.serve.app import ServeSettings, create_app

        self.add_checkpoint(path)
        llm = pointllm.load(path / "runs" / "demo" / "stage2", device="cpu")
        app = create_app(llm, ServeSettings(allowed_dirs=[path / DEMO_POINTS], max_new_tokens=16))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.server_port = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.server_port, log_level="warning")
        self._server = uvicorn.Server(config)
        threading.Thread(target=self._server.run, daemon=True).start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if time.monotonic() > deadline:
                raise AssertionError("the docs' test server did not start within 60 s")
            time.sleep(0.05)

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True


# name -> what it prepares in the block's working directory (documented in docs/development.md)
FIXTURES = {
    "": lambda world, path: None,  # an empty directory (with configs/)
    "points": DocWorld.add_points,  # my_object.npy, my_object.ply
    "tiny_checkpoint": DocWorld.add_checkpoint,  # + runs/demo/stage2, runs/demo/synth/points/*.npy
    "server": DocWorld.start_server,  # + a server of runs/demo/stage2 at SERVER_ADDRESS
}


@pytest.fixture(scope="session")
def doc_world(tmp_path_factory, base_tokenizer):
    world = DocWorld(tmp_path_factory.mktemp("docs"), base_tokenizer)
    yield world
    world.close()


def run_block(block: Block, world: DocWorld, monkeypatch) -> str:
    """Run a Python block in its fixture's directory; returns what it printed."""
    mode, fixture = block_mode(block)
    assert mode == "run", f"{block.name} is marked not-run"
    directory = world.directory(fixture)
    code = block.text
    if fixture == "server":
        code = code.replace(SERVER_ADDRESS, f"127.0.0.1:{world.server_port}")
    monkeypatch.chdir(directory)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, block.name, "exec"), {"__name__": "__doc_example__"})
    return output.getvalue()


# ---- shell blocks: command lines --------------------------------------------------------------


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined; a console prompt `$ ` removed."""
    lines, pending = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        lines.append(re.sub(r"^\s*\$\s+", "", line))
    if pending:
        lines.append(pending)
    return lines


def commands_in(text: str) -> list[list[str]]:
    """Every `pointllm ...` and `python scripts/...` command of a shell snippet, as argv."""
    found = []
    for line in logical_lines(text):
        if "pointllm" not in line and "python" not in line:
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            if re.search(r"(^|[;&|]\s*)pointllm\s", line):
                raise AssertionError(f"cannot split {line!r}: {exc}") from None
            continue
        segment: list[str] = []
        for token in [*tokens, ";"]:
            if token not in SHELL_OPERATORS:
                segment.append(token)
                continue
            if segment[:1] in (["python"], ["python3"]) and segment[1:3] == ["-m", "pointllm"]:
                segment = ["pointllm", *segment[3:]]
            if segment[:1] == ["pointllm"] or (
                segment[:1] in (["python"], ["python3"])
                and len(segment) > 1
                and segment[1].endswith(".py")
            ):
                found.append(segment)
            segment = []
    return found


def _parse_quietly(parser: argparse.ArgumentParser, argv: list[str], known: bool = False):
    """Parse argv; an error becomes AssertionError with argparse's message (help exits 0)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_known_args(argv) if known else parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0:
            return None
        raise AssertionError(stderr.getvalue().strip().splitlines()[-1]) from None
    except argparse.ArgumentError as exc:
        raise AssertionError(str(exc)) from None


def check_train_argv(argv: list[str]) -> None:
    """`pointllm train` arguments: launcher flags, then the recipe and fields, as `parse_args`
    reads them but without building the dataclasses (which would check GPUs and data)."""
    from pointllm.train import args as train_args
    from pointllm.train.launch import launch_parser

    if "-h" in argv or "--help" in argv:
        return
    _, rest = _parse_quietly(launch_parser(), argv, known=True)
    config: list[str] = []
    if "--config" in rest:
        i = rest.index("--config")
        assert i + 1 < len(rest), "--config needs a YAML file"
        recipe = ROOT / rest[i + 1]
        assert recipe.is_file(), f"--config {rest[i + 1]}: no such recipe in the repository"
        config = train_args.config_to_argv(recipe)
        del rest[i : i + 2]
    try:
        merged = train_args.translate_legacy_flags(config) + train_args.translate_legacy_flags(rest)
    except ValueError as exc:
        raise AssertionError(str(exc)) from None
    _, unknown = _parse_quietly(train_args.build_parser(), merged, known=True)
    assert not unknown, f"unknown training argument(s): {' '.join(unknown)}"


def check_command(argv: list[str]) -> str:
    """Parse one documented command; raises AssertionError naming the problem. Returns what was
    checked: 'pointllm' or 'script'."""
    if argv[0] == "pointllm":
        from pointllm.cli import build_parser

        args = _parse_quietly(build_parser(), argv[1:])
        if args is not None and args.command == "train":
            check_train_argv(list(args.argv))
        passthrough = getattr(args, "train_args", None)
        if passthrough:
            check_train_argv([a for a in passthrough if a != "--"])
        return "pointllm"
    script = ROOT / argv[1]
    assert script.is_file(), f"{argv[1]}: no such script"
    if "def build_parser" not in script.read_text():
        return "unchecked"
    spec = importlib.util.spec_from_file_location(f"_doc_script_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    _parse_quietly(module.build_parser(), argv[2:])
    return "script"


# ---- flags named in prose ----------------------------------------------------------------------

# Flags of other tools that the docs mention in passing (pip, docker, apptainer, Slurm, the
# benchmark scripts, which have no importable parser).
OTHER_TOOLS_FLAGS = {
    "--no-deps",
    "--index-url",
    "--find-links",
    "--no-index",
    "--build-arg",
    "--gpus",
    "--nv",
    "--signal",
    "--pty",
    "--ntasks-per-node",
    "--time",
    "--repo-type",
    "--local-dir",
    "--threads",
    "--batch-sizes",
    "--devices",
    "--llm",
    "--skip-encoder",
    "--stages",
}
# The original PointLLM script's flags, accepted by `pointllm train` and translated.
LEGACY_FLAGS = {
    "--version": "v1",
    "--stage_2": "True",
    "--pointnum": "8192",
    "--data_debug_num": "10",
    "--evaluation_strategy": "steps",
    "--warmup_ratio": "0.03",
    "--unfreeze_encoder": "true",
}


def known_flags() -> set[str]:
    from pointllm.cli import build_parser
    from pointllm.train.args import build_parser as train_parser
    from pointllm.train.launch import launch_parser

    flags: set[str] = set()

    def collect(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            flags.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    collect(sub)

    for parser in (build_parser(), train_parser(), launch_parser()):
        collect(parser)
    for script in sorted((ROOT / "scripts").glob("*.py")):
        if "def build_parser" in script.read_text():
            spec = importlib.util.spec_from_file_location(f"_doc_script_{script.stem}", script)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            collect(module.build_parser())
    return flags


def unknown_prose_flags(text: str, flags: set[str]) -> list[str]:
    """`--flags` inside inline code spans that no pointllm parser knows."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found = []
    for span in re.findall(r"`([^`\n]+)`", prose):
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", span):
            known = flag in flags or flag in OTHER_TOOLS_FLAGS or flag in LEGACY_FLAGS
            if not known and flag not in found:
                found.append(flag)
    return found


# ---- links and pictures ------------------------------------------------------------------------


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for the Markdown headings of a text."""
    anchors = set()
    in_code = False
    for line in text.splitlines():
        if line.strip().startswith(("```", "~~~")):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        title = re.sub(r"[^\w\- ]", "", title)
        anchors.add(title.replace(" ", "-"))
    return anchors


def broken_links(path: Path) -> list[str]:
    text = path.read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        file_part, _, anchor = target.partition("#")
        file = (path.parent / file_part).resolve() if file_part else path
        if not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text()):
            problems.append(f"{target}: no heading #{anchor} in {file.name}")
        elif file.suffix in (".png", ".jpg", ".gif") and file.stat().st_size > MAX_IMAGE_BYTES:
            problems.append(f"{target}: {file.stat().st_size} bytes, over {MAX_IMAGE_BYTES}")
    return problems


# ---- the tests ---------------------------------------------------------------------------------

BLOCKS = all_blocks()
PYTHON_BLOCKS = [b for b in BLOCKS if b.lang == "python"]
RUN_BLOCKS = [b for b in PYTHON_BLOCKS if not NOT_RUN_RE.match(b.first_line)]
SHELL_BLOCKS = [b for b in BLOCKS if b.lang in SHELL_LANGS]


def test_every_python_block_runs_or_says_why_not():
    """No block is skipped silently: each one runs, or is marked not-run with a reason."""
    modes = [block_mode(b)[0] for b in PYTHON_BLOCKS]
    assert modes.count("run") == len(RUN_BLOCKS)
    assert modes.count("run") + modes.count("not-run") == len(PYTHON_BLOCKS)
    assert len(RUN_BLOCKS) >= 5, "the docs' runnable examples went missing"
    readme = [b for b in RUN_BLOCKS if b.path.name == "README.md"]
    assert readme, "README.md has no runnable Python example"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.name)
def test_python_block_uses_existing_api(block):
    compile(block.text, block.name, "exec")
    assert check_pointllm_names(block.text, block.name) == []


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: b.name)
def test_python_block_runs(block, doc_world, monkeypatch):
    run_block(block, doc_world, monkeypatch)


def documented_commands() -> list[tuple[str, list[str]]]:
    return [(b.name, argv) for b in SHELL_BLOCKS for argv in commands_in(b.text)]


def test_documented_commands_parse():
    checked = {"pointllm": 0, "script": 0, "unchecked": 0}
    problems = []
    for where, argv in documented_commands():
        try:
            checked[check_command(argv)] += 1
        except AssertionError as exc:
            problems.append(f"{where}: {shlex.join(argv)}\n    {exc}")
    assert not problems, "\n".join(problems)
    assert checked["pointllm"] >= 50, checked  # the docs show dozens; a parsing bug shows here


def test_flags_named_in_prose_exist():
    flags = known_flags()
    problems = {
        str(path.relative_to(ROOT)): unknown
        for path in DOC_FILES
        if (unknown := unknown_prose_flags(path.read_text(), flags))
    }
    assert problems == {}
    assert unknown_prose_flags("use `pointllm chat --pionts x`", flags) == ["--pionts"]


def test_legacy_flags_are_still_translated():
    from pointllm.train.args import translate_legacy_flags

    for flag, value in LEGACY_FLAGS.items():
        assert translate_legacy_flags([flag, value]) != [flag, value], flag


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_and_pictures_are_small(path):
    assert broken_links(path) == []


def test_readme_is_short_and_the_index_links_every_page():
    assert (ROOT / "README.md").stat().st_size <= 12 * 1024
    index = (ROOT / "docs" / "index.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "index.md":
            assert f"({page.name}" in index, f"docs/index.md does not link {page.name}"


def test_documented_data_api_is_importable():
    import pointllm.data
    from pointllm.data import load_point_cloud  # noqa: F401 (the README's promise)

    assert sorted(pointllm.data.__all__) == sorted(pointllm.data._LAZY)
    for name in pointllm.data.__all__:
        assert getattr(pointllm.data, name) is not None
    with pytest.raises(AttributeError):
        pointllm.data.load_point_clouds  # noqa: B018


# ---- the checks catch bad docs -----------------------------------------------------------------

BAD_DOC = """
Some text.

```python
from pointllm.data import load_point_clouds
import pointllm
llm = pointllm.lod("runs/demo/stage2")
```

```python
# doc: not-run
print("no reason given")
```

```python
# fixture: no_such_fixture
```

```python
raise RuntimeError("this example is broken")
```

```bash
pointllm chat --model runs/demo/stage2 --pionts x.npy
pointllm eval run --task modelnet-cls --model m --data-path d --output o.json --batch-size eight
pointllm trian --config configs/stage1.yaml
cd somewhere && pointllm train --config configs/stage1.yaml --lerning_rate 1e-3
pointllm train --config configs/no_such_recipe.yaml
pointllm hpc render --scheduler pbs --job stage1 -- --per_device_batch 8
python scripts/preview_grid.py runs/demo --colums 3
```
"""


def test_checks_reject_a_bad_doc(tmp_path, doc_world, monkeypatch):
    blocks = fenced_blocks(BAD_DOC, tmp_path / "bad.md")
    bad_api, no_reason, bad_fixture, broken, shell = blocks
    problems = check_pointllm_names(bad_api.text)
    assert any("load_point_clouds" in p for p in problems), problems
    assert any("pointllm.lod" in p for p in problems), problems
    with pytest.raises(AssertionError, match="needs a reason"):
        block_mode(no_reason)
    with pytest.raises(AssertionError, match="unknown fixture"):
        block_mode(bad_fixture)
    with pytest.raises(RuntimeError, match="this example is broken"):
        run_block(broken, doc_world, monkeypatch)

    commands = commands_in(shell.text)
    assert len(commands) == 7
    messages = []
    for argv in commands:
        with pytest.raises(AssertionError) as caught:
            check_command(argv)
        messages.append(str(caught.value))
    assert "--pionts" in messages[0]
    assert "eight" in messages[1]
    assert "trian" in messages[2]
    assert "--lerning_rate" in messages[3]
    assert "no_such_recipe" in messages[4]
    assert "--per_device_batch" in messages[5]
    assert "--colums" in messages[6]


def test_checks_accept_good_commands():
    good = """
pointllm chat --model runs/demo/stage2 --points a.npy --prompt "What is this?"   # a comment
$ pointllm eval run --task objaverse-caption --model m --data-path d \\
    --anno-path a.json --output o.json --batch-size 4
pointllm train --config configs/demo_stage1.yaml --nproc 2 --max_steps 20 --stage_2 True
pointllm hpc render --scheduler slurm --job stage1 -- --per_device_train_batch_size 8
"""
    commands = commands_in(good)
    assert [argv[1] for argv in commands] == ["chat", "eval", "train", "hpc"]
    for argv in commands:
        assert check_command(argv) == "pointllm"


def test_links_check_catches_missing_pages(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [bad](#nowhere)\n")
    assert broken_links(page) == [
        "missing.md: no such file",
        "#nowhere: no heading #nowhere in page.md",
    ]
