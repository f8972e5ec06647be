"""The README and the documentation site, checked so that they cannot go stale.

- Every fenced code block of README.md and docs/**/*.md runs: ```python blocks in one Python process
  per page (they share a namespace), ```sh/```bash/```console blocks with bash (the lowercase shell
  variables a block sets are kept for the page's later blocks), in order, in one temporary working
  folder per page that holds a small image folder `photos/` (3 classes) and `new/` (2 images), with
  EMBEDPIPE_CACHE pointing to a temporary cache shared by every page. Output-only languages (text,
  toml, ...) are not run. A block that cannot run here carries `<!-- skip: REASON -->` on the line
  before its fence; a block written to a file first carries `<!-- file: NAME -->`.
- The Examples of the public verbs' docstrings (shown on the Python API page) run in such a folder too.
- `mkdocs build --strict` succeeds without the network, and the site loads nothing from it.
- The README is one screen that PyPI can show: short, with no relative links or images, its Python
  example near the top, and a results table copied from benchmarks/results/.
- Nothing in the documentation talks about how the project was made.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pytest
from conftest import make_image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

PYTHON = {"python", "py"}
SHELL = {"sh", "bash", "shell", "console"}
SHOWN = {"text", "toml", "json", "yaml", "csv", "ini"}  # output or file contents: not run
CLASSES = ("cat", "dog", "fox")
PER_CLASS = 10
FIXED_MTIME_NS = 1_700_000_000 * 10**9  # the same files in every page's folder: one cache key for all
BLOCK_TIMEOUT_S = 240
MARKER = re.compile(r"^<!--\s*(skip|file):\s*(.*?)\s*-->$")
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None = None  # the reason, when marked <!-- skip: ... -->
    file: str | None = None  # written to this file instead of being run, when marked <!-- file: ... -->

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse(page: Path) -> list[Block]:
    """The fenced blocks of a page, with the marker on the line before each (if any)."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            i += 1
        assert i < len(lines), f"{page.relative_to(ROOT)}:{start + 1}: code block never closed"
        block = Block(page, start + 1, lang, "\n".join(lines[start + 1 : i]) + "\n")
        marker = MARKER.match(lines[start - 1].strip()) if start else None
        if marker:
            setattr(block, marker.group(1), marker.group(2))
        blocks.append(block)
        i += 1
    return blocks


def markers(page: Path) -> list[tuple[int, str, str, bool]]:
    """(line, kind, text, followed by a fence) of every skip/file marker of a page."""
    lines = page.read_text().splitlines()
    found = []
    for n, line in enumerate(lines):
        if line.strip().startswith("<!--") and re.search(r"<!--\s*(skip|file)\b", line):
            m = MARKER.match(line.strip())
            kind, text = (m.group(1), m.group(2)) if m else ("malformed", line.strip())
            found.append((n + 1, kind, text, n + 1 < len(lines) and bool(FENCE.match(lines[n + 1]))))
    return found


def runnable_pages() -> list[Path]:
    return [p for p in PAGES if any(b.lang in PYTHON | SHELL and not b.skip for b in parse(p))]


# -- the shape of the pages ------------------------------------------------------------------------

def test_every_block_says_its_language_and_every_language_is_known() -> None:
    problems = [f"{b.where}: ```{b.lang or '(no language)'}" for p in PAGES for b in parse(p)
                if b.lang not in PYTHON | SHELL | SHOWN]
    assert not problems, "give each code block a known language (a runnable one or text):\n" + "\n".join(problems)


def test_every_skip_marker_gives_a_reason_and_marks_a_block() -> None:
    problems = []
    for page in PAGES:
        for line, kind, text, fenced in markers(page):
            where = f"{page.relative_to(ROOT)}:{line}"
            if kind == "malformed":
                problems.append(f"{where}: write <!-- skip: REASON --> or <!-- file: NAME --> on one line: {text}")
            elif not fenced:
                problems.append(f"{where}: the {kind} marker must stand on the line right before a code fence")
            elif kind == "skip" and len(text.split()) < 3:
                problems.append(f"{where}: say why the block cannot run here, in a few words (got {text!r})")
    assert not problems, "\n".join(problems)


def test_the_pages_have_runnable_blocks() -> None:
    blocks = [b for p in PAGES for b in parse(p)]
    run = [b for b in blocks if b.lang in PYTHON | SHELL and not b.skip]
    assert len(run) >= 25 and len(runnable_pages()) >= 8, (len(run), runnable_pages())
    skipped = [b for b in blocks if b.skip]
    assert len(skipped) <= len(run) // 2, "most examples must run"


def test_readme_is_one_screen_that_pypi_can_show() -> None:
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; keep it to 150 and move the rest to docs/"
    python = [b for b in parse(README) if b.lang in PYTHON and not b.skip]
    assert python and python[0].line <= 60, "the first runnable Python example must start within 60 lines"
    assert len(python[0].code.strip().splitlines()) <= 12
    for needed in ("make demo", "make test", "pip install", "embedpipe extract", "EMBEDPIPE_CACHE",
                   "~/.cache/embedpipe", "make docs"):
        assert needed in text, f"README.md should mention {needed!r}"
    relative = [m.group(0) for m in re.finditer(r"!?\[[^\]]*\]\((?!https?://)[^)]*\)", text)]
    assert not relative, f"PyPI shows the README alone: no relative links or images: {relative}"
    assert "![" not in text and "<img" not in text.lower(), "no images in the README (PyPI)"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^readme = "README.md"', pyproject, re.M), "the PyPI description is the README"


def test_readme_results_table_is_the_committed_one_and_names_its_machine() -> None:
    text = README.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "effnet-lite0" in line]
    assert rows, "the README shows one results table"
    committed = (ROOT / "benchmarks" / "results" / "demo.md").read_text()
    stale = [row for row in rows if row not in committed]
    assert not stale, f"README rows not in benchmarks/results/demo.md (copy them again): {stale}"
    table_at = text.index(rows[0])
    assert "AMD EPYC" in text[max(0, table_at - 600) : table_at], "say which CPU the table was measured on"


FORBIDDEN = [  # how the project was made is not the reader's business
    r"\bsessions?\b", r"\bissue\s*#?\s*\d", r"previous (demo|run|version|release)", r"\bwas lent\b",
    r"due to be re-?run", r"not measured", r"later `?gpu", r"\bpreviously\b", r"in an earlier run",
    r"\bTODO\b", r"\bFIXME\b", r"/work/", r"/tmp/", r"\bwe (measured|tried|ran)\b",
]


def test_the_docs_do_not_talk_about_how_the_project_was_made() -> None:
    found = [f"{page.relative_to(ROOT)}:{n}: {line.strip()}" for page in [*PAGES, ROOT / "mkdocs.yml"]
             for n, line in enumerate(page.read_text().splitlines(), 1)
             for pattern in FORBIDDEN if re.search(pattern, line, re.I)]
    assert not found, "\n".join(found)


def test_mkdocs_config_is_offline_and_lists_every_page() -> None:
    yaml = pytest.importorskip("yaml", reason='PyYAML comes with the docs extra: pip install -e ".[docs]"')
    text = (ROOT / "mkdocs.yml").read_text()
    config = yaml.safe_load(text)
    assert config["theme"]["name"] == "material" and config["theme"].get("font") is False, "theme fonts off"
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in config.get("plugins", [])]
    assert not any("privacy" in p for p in plugins), "no privacy plugin (it downloads assets)"
    code = "\n".join(line.split("#")[0] for line in text.splitlines())  # the settings, not the comments
    assert not re.search(r"^\s*import:", code, re.M), "no remote inventories"
    assert not re.search(r"https?://", code), "no remote scripts, styles or inventories"
    for key in ("extra_javascript", "extra_css"):
        assert not any("//" in str(item) for item in config.get(key, [])), key

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [p for item in nav for p in pages(item)]
        if isinstance(nav, dict):
            return [p for value in nav.values() for p in pages(value)]
        return []

    listed = set(pages(config["nav"]))
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert listed == on_disk, f"pages not in nav: {sorted(on_disk - listed)}; missing: {sorted(listed - on_disk)}"


# -- the site builds, offline ----------------------------------------------------------------------

def offline_env() -> dict[str, str]:
    """This environment, with a proxy that refuses every connection: anything that tries the network
    fails instead of fetching."""
    env = dict(os.environ)
    dead = "http://127.0.0.1:9"
    env.update({"http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
                "no_proxy": "", "NO_PROXY": "", "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.mark.timeout(240)
def test_the_site_builds_strict_and_offline(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason='the docs extra: pip install -e ".[docs]"')
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=230)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert not re.search(r"^(WARNING|ERROR)\b", log, re.M), log[-4000:]
    assert not re.search(r"https?://|urlopen|connection|proxy", log, re.I), "the build reached for the network:\n" + log

    remote = []
    for page in site.rglob("*.html"):
        html = page.read_text()
        remote += [f"{page.name}: {m.group(0)}" for m in re.finditer(
            r"<(script|link|img|iframe)\b[^>]*(src|href)=\"(https?:)?//[^\"]*\"", html)]
        remote += [f"{page.name}: {m.group(0)}" for m in re.finditer(r"@import\s+url\([\"']?(https?:)?//", html)]
    assert not remote, "the site loads from the network:\n" + "\n".join(remote[:20])

    cli = (site / "cli.html").read_text()
    for verb in ("list", "extract", "info", "train", "advise", "audit", "evaluate", "predict", "bench"):
        assert f"usage: embedpipe {verb}" in cli, f"the CLI reference lacks `embedpipe {verb} --help`"
    import embedpipe

    heads = (site / "heads.html").read_text()
    for name in embedpipe.list_heads():
        assert f'id="{name}"' in heads, f"the heads page lacks the {name} head"
    assert "Parameters" in heads
    bench = (site / "benchmarks.html").read_text()
    assert bench.count("Measured on") >= 7 and "<table>" in bench
    assert (site / "figures" / "demo-accuracy.png").is_file()
    assert "embedpipe.extract" in (site / "api.html").read_text()


# -- every block runs ------------------------------------------------------------------------------
#
# Speed: a page's examples call `embedpipe` dozens of times, and a fresh interpreter spends seconds
# importing torch each time. So the blocks talk to a warm server: one Python process that has imported
# embedpipe (and torch, without running anything in it) and forks a child per request. A child takes
# over the caller's stdin, stdout and stderr (passed over a Unix socket), its working folder and its
# environment, and runs either `embedpipe.cli.main(argv)` (the `embedpipe` on the blocks' PATH is a
# small client of the server) or a page's Python blocks. Everything else is real: the real CLI code,
# real models, real files, one process per command. EMBEDPIPE_DOCS_COLD=1 runs the installed console
# script and a fresh interpreter per page instead (slower; the same blocks).

SERVER = r"""
import json, os, socket, sys, traceback
import importlib
for name in ("embedpipe", "embedpipe.cli", "embedpipe.extract", "embedpipe.train", "embedpipe.predict",
             "embedpipe.advise", "embedpipe.audit", "embedpipe.bench", "embedpipe.report", "embedpipe.heads", "embedpipe.backbones",
             "embedpipe.cache", "torch", "timm", "h5py", "sklearn.linear_model", "lightgbm", "matplotlib.pyplot"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
from embedpipe.cli import main

def child(req, fds):
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    sys.argv = ["embedpipe", *req.get("argv", [])]
    code = 1
    try:
        if req["kind"] == "cli":
            code = main(req["argv"])
        else:
            exec(compile(req["code"], "python-session", "exec"), {"__name__": "__main__"})
            code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code or 0)

server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen(8)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 22, 3)
    req = json.loads(msg)
    pid = os.fork()
    if pid == 0:
        server.close()
        if req["kind"] == "python":  # a session lives on beside the commands: detach it
            conn.close()
            if os.fork():
                os._exit(0)
        child(req, fds)
    for fd in fds:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    if req["kind"] == "cli":
        conn.sendall(str(os.waitstatus_to_exitcode(status)).encode())
    conn.close()
"""

CLIENT = """#!{python} -S
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["EMBEDPIPE_DOCS_SERVER"])
req = {{"kind": "cli", "argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}
socket.send_fds(s, [json.dumps(req).encode()], [0, 1, 2])
code = s.recv(16)
sys.exit(min(255, abs(int(code))) if code else 1)
"""

COLD = os.environ.get("EMBEDPIPE_DOCS_COLD") == "1"


@pytest.fixture(scope="module")
def docs_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The images every page works on, the cache every page shares, and the warm server."""
    base = tmp_path_factory.mktemp("docs")
    images = base / "images"
    for c, name in enumerate(CLASSES):
        folder = images / "photos" / name
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            make_image(c, i).save(folder / f"{i + 1:02d}.png")
    (images / "new").mkdir()
    make_image(0, 100).save(images / "new" / "a.png")
    make_image(1, 100).save(images / "new" / "b.png")
    for path in images.rglob("*.png"):
        os.utime(path, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))
    cache = base / "cache"
    cache.mkdir()
    bindir = base / "bin"
    bindir.mkdir()
    sockets = Path(tempfile.mkdtemp(prefix="embedpipe-docs-"))  # short: a socket path has ~100 bytes at most
    world = {"images": images, "cache": cache, "bin": bindir, "socket": sockets / "server.sock"}
    if COLD:
        yield world
        return
    client = bindir / "embedpipe"
    client.write_text(CLIENT.format(python=sys.executable))
    client.chmod(0o755)
    env = {**offline_env(), "EMBEDPIPE_CACHE": str(cache), "MPLBACKEND": "Agg"}
    # its own process group: the server and every child it forked end together at the end
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(world["socket"])], env=env, cwd=base,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready", "the docs server did not start"
        yield world
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(sockets, ignore_errors=True)


class PythonSession:
    """One Python process per page: its blocks run in order in one namespace, as in a notebook."""

    DRIVER = (
        "import json, sys, traceback\n"
        "ns = {'__name__': '__main__'}\n"
        "for line in sys.stdin:\n"
        "    req = json.loads(line)\n"
        "    try:\n"
        "        exec(compile(req['code'], req['where'], 'exec'), ns)\n"
        "        status = 'ok'\n"
        "    except BaseException:\n"
        "        traceback.print_exc()\n"
        "        status = 'failed'\n"
        "    sys.stderr.flush()\n"
        "    print('\\n@@block-done@@ ' + status, flush=True)\n"
    )

    def __init__(self, cwd: Path, env: dict[str, str], server: Path | None) -> None:
        self.proc: subprocess.Popen[str] | None = None
        if server is None:
            self.proc = subprocess.Popen([sys.executable, "-u", "-c", self.DRIVER], cwd=cwd, env=env, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.stdin, stdout = self.proc.stdin, self.proc.stdout
        else:  # a child of the warm server, on our pipes
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(server))
                req = {"kind": "python", "code": self.DRIVER, "cwd": str(cwd), "env": env}
                socket.send_fds(s, [json.dumps(req).encode()], [in_r, out_w, out_w])
                s.recv(1)  # the server closes the connection once the session has started
            os.close(in_r)
            os.close(out_w)
            self.stdin, stdout = os.fdopen(in_w, "w"), os.fdopen(out_r)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()

    def _read(self, stdout: TextIO) -> None:
        for line in stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, block: Block) -> tuple[bool, str]:
        self.stdin.write(json.dumps({"code": block.code, "where": block.where}) + "\n")
        self.stdin.flush()
        out: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=BLOCK_TIMEOUT_S)
            except queue.Empty:
                return False, "".join(out) + f"\n(no answer in {BLOCK_TIMEOUT_S} s)"
            if line is None:
                return False, "".join(out) + "\n(the Python process ended)"
            if line.startswith("@@block-done@@ "):
                return line.split()[1] == "ok", "".join(out)
            out.append(line)

    def close(self) -> None:
        self.stdin.close()  # the session's loop ends at the end of its input
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


SHELL_PRELUDE = "set -euo pipefail\n[ -f \"$DOCS_VARS\" ] && source \"$DOCS_VARS\"\n"
# After a block: keep the lowercase variables it set (cache=..., ...) for the page's later blocks.
SHELL_EPILOGUE = ("\nfor __v in $(compgen -v | grep -E '^[a-z][a-z0-9_]*$'); do declare -p \"$__v\"; done"
                  " > \"$DOCS_VARS.new\" && mv \"$DOCS_VARS.new\" \"$DOCS_VARS\"\n")


def shell_code(block: Block) -> str:
    if block.lang != "console":
        return block.code
    return "\n".join(line[2:] for line in block.code.splitlines() if line.startswith("$ ")) + "\n"


def page_folder(docs_world: dict[str, Path], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A page's working folder (the images, and ./cache pointing to the shared cache) and environment."""
    work = tmp_path / "work"
    shutil.copytree(docs_world["images"], work)
    # `cache` beside the images is the shared cache too, for code that puts its cache in ./cache
    (work / "cache").symlink_to(docs_world["cache"], target_is_directory=True)
    env = offline_env()
    path = [str(Path(sys.executable).parent)]  # `embedpipe` and `python` of this environment
    if not COLD:
        path.insert(0, str(docs_world["bin"]))  # `embedpipe`: the warm server's client
    env.update({"PATH": os.pathsep.join([*path, env.get("PATH", "")]), "EMBEDPIPE_CACHE": str(docs_world["cache"]),
                "EMBEDPIPE_DOCS_SERVER": str(docs_world["socket"]), "DOCS_VARS": str(tmp_path / "vars.sh"),
                "COLUMNS": "100", "MPLBACKEND": "Agg"})
    return work, env


@pytest.mark.timeout(600)
@pytest.mark.parametrize("page", runnable_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_of_the_page_runs(page: Path, docs_world: dict[str, Path], tmp_path: Path) -> None:
    work, env = page_folder(docs_world, tmp_path)
    python: PythonSession | None = None
    try:
        for block in parse(page):
            started = time.perf_counter()
            if block.skip:
                continue
            if block.file:
                (work / block.file).write_text(block.code)
                continue
            if block.lang in PYTHON:
                python = python or PythonSession(work, env, None if COLD else docs_world["socket"])
                ok, output = python.run(block)
            elif block.lang in SHELL:
                proc = subprocess.run(["bash", "-c", SHELL_PRELUDE + shell_code(block) + SHELL_EPILOGUE], cwd=work,
                                      env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
                ok, output = proc.returncode == 0, proc.stdout + proc.stderr
            else:
                continue
            print(f"{block.where}: {time.perf_counter() - started:.1f} s")  # shown with -rA or on failure
            assert ok, f"the ```{block.lang} block at {block.where} failed:\n{block.code}\n--- output ---\n{output[-4000:]}"
    finally:
        if python is not None:
            python.close()


# The public verbs' docstring examples (shown on the Python API page) run too, in a page's folder:
# they use its `photos/` and `new/`. Each docstring is its own doctest, with its own names.
API_EXAMPLES = [("embedpipe.extract", "extract"), ("embedpipe.extract", "run_extract"),
                ("embedpipe.train", "train"), ("embedpipe.train", "train_heads"), ("embedpipe.train", "evaluate"),
                ("embedpipe.train", "few_shot"), ("embedpipe.predict", "predict"), ("embedpipe.advise", "advise"),
                ("embedpipe.audit", "audit"), ("embedpipe.bench", "benchmark"), ("embedpipe.sklearn", "ImageEmbedder")]
DOCTESTS = """
import doctest, importlib
finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
ran = {{}}
for module, name in {examples!r}:
    for test in finder.find(getattr(importlib.import_module(module), name), name, globs={{}}):
        result = runner.run(test)  # a failing example is printed, with what it gave
        assert result.failed == 0, f"{{module}}.{{name}}: {{result.failed}} failing example(s), above"
        ran[name] = ran.get(name, 0) + result.attempted  # a class: its own and its methods' examples
thin = [name for _, name in {examples!r} if ran.get(name, 0) < 3]
assert not thin, f"give these docstrings an Examples section: {{thin}}"
"""


@pytest.mark.timeout(600)
def test_the_public_verbs_docstring_examples_run(docs_world: dict[str, Path], tmp_path: Path) -> None:
    work, env = page_folder(docs_world, tmp_path)
    session = PythonSession(work, env, None if COLD else docs_world["socket"])
    try:
        ok, output = session.run(Block(DOCS / "api.md", 1, "python", DOCTESTS.format(examples=API_EXAMPLES)))
    finally:
        session.close()
    assert ok, output[-6000:]
