"""Hostile input at the torch front doors of profiling (issue 20): model folders, devices,
budgets near the int64 limits, per-request presses on short prompts.

Named after the class of failure each test guards against, as in
tests/test_front_doors_profiling.py.
"""

from __future__ import annotations

import json
import re
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("kvpress")

import budgetopt  # noqa: E402
from budgetopt.torch import compact, keep_mask  # noqa: E402
from helpers import run_cli  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

torch.set_num_threads(1)
WORDS = "the a cat dog sat ran on mat what who where did".split()


def make_tokenizer():
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>")


def make_model(max_positions=256):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=3 + len(WORDS), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2)
    config._attn_implementation = "sdpa"
    return transformers.LlamaForCausalLM(config).eval()
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def one_error_line(code, out, err, *needles):
    assert code == 2, err
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    make_model().save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def copy_model(model_dir, dest):
    dest.mkdir()
    for name in os.listdir(model_dir):
        (dest / name).write_bytes((model_dir / name).read_bytes())
    return dest


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text(json.dumps({"context": "the cat sat on the mat the dog ran on the mat", "questions": ["who sat"]}) + "\n")
    return path


# == 2. wrong answers ===========================================================================
@pytest.mark.parametrize("budget", [INT64_MIN, INT64_MIN + 1, -(2**62), INT64_MAX, 2**62])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_wrong_answer_budgets_near_the_int64_limits_do_not_wrap(ref, budget, as_tensor):
    scores = ref.random_scores((2, 3, 20), torch.float32, seed=4)
    budgets = np.array([[budget, 5, budget], [0, budget, 7]], dtype=np.int64)
    given = torch.as_tensor(budgets) if as_tensor else budgets
    expected = ref.keep_mask(scores, np.clip(budgets, 0, 20), sink=1, window=1)
    np.testing.assert_array_equal(keep_mask(scores, given, sink=1, window=1).numpy(), expected)
    keys, values = torch.randn(2, 3, 20, 4), torch.randn(2, 3, 20, 4)
    out = compact(keys, values, scores, given, sink=1, window=1)
    np.testing.assert_array_equal(out.lengths.numpy(), expected.sum(axis=-1))


def test_wrong_answer_model_folder_without_the_models_weights_is_refused(model_dir, calib, tmp_path, capfd):
    from safetensors.torch import load_file, save_file

    weights = load_file(model_dir / "model.safetensors")
    for name, kept in (("none", {"unrelated.weight": torch.zeros(3)}),
                       ("some", dict(list(weights.items())[:3]))):
        folder = copy_model(model_dir, tmp_path / name)
        save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})
        code, out, err = run_cli(capfd, "profile", folder, "--calibration", calib, "--scorer", "knorm",
                                 "-o", tmp_path / f"run-{name}", "--max-new-tokens", 2, "--device", "cpu")
        one_error_line(code, out, err, str(folder), "of the model's", "random weights")
        assert not (tmp_path / f"run-{name}").exists()
    # the complete folder still profiles
    code, _, err = run_cli(capfd, "profile", model_dir, "--calibration", calib, "--scorer", "knorm",
                           "-o", tmp_path / "run", "--max-new-tokens", 2, "--device", "cpu")
    assert code == 0, err


@pytest.mark.parametrize("length", [3, 5, 6, 9])
@pytest.mark.parametrize("layerwise", [False, True])
def test_wrong_answer_request_press_keeps_protected_tokens_on_short_prompts(length, layerwise):
    """At 0.99 compression of a short prompt every head keeps its floor (its protected
    tokens), as BudgetPress does, instead of raising mid-forward."""
    from kvpress import KnormPress
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from budgetopt.torch.request_press import RequestBudgetPress

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa",
                                         pad_token_id=0)).eval()
    rng = np.random.default_rng(0)
    scores = [rng.gamma(0.5, size=(2, 2, 40)) for _ in range(2)]
    ra = budgetopt.RequestAllocator.fit([s ** 2 for s in scores], scores, sink=2, window=3, shrinkage=0.5)
    press = RequestBudgetPress(KnormPress(), ra, compression_ratio=0.99, layerwise=layerwise)
    ids = torch.randint(1, 64, (2, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), press(model):
        model.model(input_ids=ids, past_key_values=DynamicCache())
    floor = min(max(round(ra.min_keep_fraction * length), ra.sink + ra.window), length)
    for block in model.model.layers:
        indices = block.self_attn.masked_key_indices
        kept = np.full((2, 2), length)
        if indices is not None:
            b, h, _ = (i.numpy() for i in indices)
            np.subtract.at(kept, (b, h), 1)
        assert (kept == floor).all(), kept


# == 3. crashes instead of refusals ==============================================================
@pytest.mark.parametrize("device", ["mps", "xpu", "meta", "cuda", "cuda:7", "hpu", "cpu:0"])
def test_crash_devices_that_are_not_there_are_refused(model_dir, calib, tmp_path, capfd, device):
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    if device == "cpu:0":  # a CPU index is still the CPU
        from budgetopt.torch.profiling.run import _resolve_device

        assert _resolve_device(device).type == "cpu"
        return
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    code, out, err = run_cli(capfd, "profile", model_dir, "--calibration", calib, "--scorer", "knorm",
                             "-o", tmp_path / "run", "--device", device)
    one_error_line(code, out, err, f"`device` {device!r}")
    assert not (tmp_path / "run").exists()


def _broken_folders(model_dir, base):
    weights = (model_dir / "model.safetensors").read_bytes()
    cases = {
        "truncated weights": ("model.safetensors", weights[: len(weights) // 2]),
        "weights header only": ("model.safetensors", weights[:40]),
        "empty weights": ("model.safetensors", b""),
        "broken tokenizer.json": ("tokenizer.json", b'{"version": "1.0", "model": {"type": "WordLevel"}}'),
        "tokenizer.json not JSON": ("tokenizer.json", b"\x00\x01garbage"),
        "deep tokenizer.json": ("tokenizer.json", b"[" * 100_000 + b"]" * 100_000),
        "deep config.json": ("config.json", b'{"model_type": "llama", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "config.json a list": ("config.json", b"[1, 2]"),
    }
    for i, (name, (file, data)) in enumerate(cases.items()):
        folder = copy_model(model_dir, base / f"m{i}")
        (folder / file).write_bytes(data)
        yield name, folder, file


def test_crash_corrupt_model_folders_are_refused(model_dir, calib, tmp_path, capfd):
    for name, folder, file in _broken_folders(model_dir, tmp_path):
        code, out, err = run_cli(capfd, "profile", folder, "--calibration", calib, "--scorer", "knorm",
                                 "-o", tmp_path / "run", "--device", "cpu", "--max-new-tokens", 2)
        assert code == 2, (name, err)
        one_error_line(code, out, err, str(folder))
        assert not (tmp_path / "run").exists(), name


def test_crash_tiny_temperature_samples_its_limit_greedy(model_dir, calib, tmp_path, capfd):
    from budgetopt.torch.profiling.run import profile_model

    model, tokenizer = make_model(), make_tokenizer()
    greedy = profile_model(model, tokenizer, calib, scorer="knorm", max_new_tokens=4, progress=False)
    for temperature in (1e-300, 5e-324):
        sampled = profile_model(model, tokenizer, calib, scorer="knorm", max_new_tokens=4, progress=False,
                                sampling=True, temperature=temperature)
        assert [m["new_tokens"] for m in sampled.pair_meta] == [m["new_tokens"] for m in greedy.pair_meta]
        for a, b in zip(sampled.oracles, greedy.oracles):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    code, _, err = run_cli(capfd, "profile", model_dir, "--calibration", calib, "--scorer", "knorm", "-o",
                           tmp_path / "run", "--device", "cpu", "--max-new-tokens", 3, "--sample",
                           "--temperature", "1e-300")
    assert code == 0, err


# == 4. unbounded memory or time =================================================================
def test_unbounded_long_calibration_line_is_refused_before_tokenizing_it_whole(tmp_path, monkeypatch):
    from budgetopt.errors import InvalidInputError
    from budgetopt.torch.profiling.run import encode_calibration

    tokenizer = make_tokenizer()
    seen = []
    real = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda text, **k: seen.append(len(text)) or real(text, **k))
    words = "the cat sat on the mat " * 10_000  # 230,000 characters, 60,000 tokens
    for where, line in (("the context", {"context": words, "questions": ["who sat"]}),
                        ("questions[0]", {"context": "the cat sat on the mat", "questions": [words]})):
        calib = tmp_path / "calib.jsonl"
        calib.write_text(json.dumps(line) + "\n")
        seen.clear()
        with pytest.raises(InvalidInputError, match=rf"calib.jsonl:1: {re.escape(where)} exceeds the model's maximum "
                                                    r"length \(256 tokens\)"):
            encode_calibration(tokenizer, str(calib), sink=1, window=1, max_new_tokens=2, max_length=256)
        assert max(seen) <= 32 * (256 + 16)  # only a prefix was tokenized
    # a text of more than 1024 characters per token of the maximum length is refused unread
    # (300,007 characters and the BOS token "<s>")
    calib.write_text(json.dumps({"context": " " * 300_000 + "the cat", "questions": ["who"]}) + "\n")
    seen.clear()
    with pytest.raises(InvalidInputError, match="300,010 characters: too long"):
        encode_calibration(tokenizer, str(calib), sink=1, window=1, max_new_tokens=2, max_length=256)
    assert seen == []
    # near the limit, a text that fits is tokenized whole and kept
    calib.write_text(json.dumps({"context": "the cat sat on the mat " * 40 + " " * 20_000, "questions": ["who"]}) + "\n")
    (encoded,) = encode_calibration(tokenizer, str(calib), sink=1, window=1, max_new_tokens=2, max_length=256)
    assert len(encoded.context_ids) == 1 + 6 * 40  # BOS and the words (spaces make no tokens)


# == 5. runs silently mixed ======================================================================
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_runs_mixed_second_profile_is_refused_while_another_process_writes(model_dir, calib, tmp_path, capfd):
    """A real concurrent writer: a second process holds the run (as a running profile does)
    while `budgetopt profile -o RUN --no-resume --step-reduce sum` starts; it is refused and
    nothing of the first run changes."""
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    code, _, err = run_cli(capfd, "profile", model_dir, "--calibration", calib, "--scorer", "knorm", "-o", run,
                           "--max-new-tokens", 2, "--device", "cpu")
    assert code == 0, err
    ready = tmp_path / "ready"
    script = ("import sys, time\nfrom budgetopt.runs import lock_run_dir\nlock = lock_run_dir(sys.argv[1])\n"
              "open(sys.argv[2], 'w').close()\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(run), str(ready)],
                              env=dict(os.environ, PYTHONPATH=REPO))
    try:
        for _ in range(600):
            if ready.exists():
                break
            time.sleep(0.1)
        before = {p.name: p.read_bytes() for p in [*run.iterdir(), *(run / "pairs").iterdir()] if p.is_file()}
        code, out, err = run_cli(capfd, "profile", model_dir, "--calibration", calib, "--scorer", "knorm", "-o",
                                 run, "--max-new-tokens", 2, "--device", "cpu", "--no-resume", "--step-reduce", "sum")
        one_error_line(code, out, err, f"another process (pid {holder.pid}) is writing this run")
        after = {p.name: p.read_bytes() for p in [*run.iterdir(), *(run / "pairs").iterdir()] if p.is_file()}
        assert after == before
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run_cli(capfd, "profile", model_dir, "--calibration", calib, "--scorer", "knorm", "-o", run,
                           "--max-new-tokens", 2, "--device", "cpu", "--no-resume", "--step-reduce", "sum")
    assert code == 0, err
    assert json.loads((run / "meta.json").read_text())["step_reduce"] == "sum"


def test_runs_mixed_resuming_with_another_model_of_the_same_folder_name_is_refused(model_dir, calib, tmp_path, capfd):
    other = tmp_path / "b" / "tiny"  # the same base name as model_dir, other weights
    other.parent.mkdir()
    torch.manual_seed(1)
    model = make_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(other)
    make_tokenizer().save_pretrained(other)
    run = tmp_path / "run"
    common = ["--calibration", calib, "--scorer", "knorm", "-o", run, "--max-new-tokens", 2, "--device", "cpu"]
    code, _, err = run_cli(capfd, "profile", model_dir, *common)
    assert code == 0, err
    before = (run / "meta.json").read_bytes()
    code, out, err = run_cli(capfd, "profile", other, *common)
    one_error_line(code, out, err, "holds a run with other settings (model.fingerprint")
    assert (run / "meta.json").read_bytes() == before
    # the same weights in another folder (of the same name) are the same model
    (tmp_path / "c").mkdir()
    copy = copy_model(model_dir, tmp_path / "c" / "tiny")
    code, _, err = run_cli(capfd, "profile", copy, *common)
    assert code == 0, err


def test_unbounded_fifo_in_a_model_folder_is_refused_not_waited_on(model_dir, calib, tmp_path, capfd):
    for i, name in enumerate(("tokenizer.json", "config.json", "extra.txt")):
        folder = copy_model(model_dir, tmp_path / f"m{i}")
        if (folder / name).exists():
            os.unlink(folder / name)
        os.mkfifo(folder / name)
        code, out, err = run_cli(capfd, "profile", folder, "--calibration", calib, "--scorer", "knorm",
                                 "-o", tmp_path / "run", "--device", "cpu")
        one_error_line(code, out, err, f"{name}: is not a regular file")


@pytest.mark.parametrize("rank", ["abc", "-1", "99"])
def test_crash_bad_local_rank_with_device_auto_is_refused(monkeypatch, rank):
    from budgetopt.errors import InvalidInputError
    from budgetopt.torch.profiling.run import _resolve_device

    monkeypatch.setenv("LOCAL_RANK", rank)
    if not torch.cuda.is_available():
        assert _resolve_device("auto").type == "cpu"
        return
    with pytest.raises(InvalidInputError, match="LOCAL_RANK"):
        _resolve_device("auto")
