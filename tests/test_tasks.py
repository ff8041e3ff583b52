"""Evaluation tasks (budgetopt.tasks): seeded generators, scorers, user files, overlap refusal."""

import json
import re
import subprocess
import sys

import pytest

from budgetopt import tasks
from budgetopt.errors import InvalidInputError, InvalidTypeError


@pytest.mark.parametrize("task", tasks.TASKS)
def test_generators_are_deterministic_and_prefix_stable(task):
    a = tasks.make_examples(task, 4, seed=3, context_length=800)
    b = tasks.make_examples(task, 2, seed=3, context_length=800, start=2)
    assert a[2:] == b
    assert tasks.make_examples(task, 4, seed=3, context_length=800) == a
    other = tasks.make_examples(task, 4, seed=4, context_length=800)
    assert [e.context for e in other] != [e.context for e in a]


@pytest.mark.parametrize("task", tasks.TASKS)
def test_answers_are_in_the_context_and_score_themselves(task):
    for ex in tasks.make_examples(task, 5, seed=0, context_length=1200):
        assert len(ex.context) >= 1200 - 200
        for answer in ex.answers:
            assert answer in ex.context
        assert tasks.score(ex.scorer, " ; ".join(ex.answers), ex.answers)
        assert ex.answer_prefix and ex.answer_prefix[-1].isalpha()  # the answer follows the prefix
        assert not tasks.score(ex.scorer, "I do not know.", ex.answers)


def test_task_facts_match_a_direct_count():
    # common / frequent: the answers are the three most repeated words, counted independently
    for ex in tasks.make_examples("common", 3, seed=1, context_length=900):
        words = re.findall(r"^\d+\. (\w+)$", ex.context, flags=re.M)
        counts = {w: words.count(w) for w in set(words)}
        third = sorted(counts.values(), reverse=True)[2]
        assert all(counts[a] >= third for a in ex.answers)
        assert sum(v >= third for v in counts.values()) == 3
    for ex in tasks.make_examples("frequent", 3, seed=1, context_length=900):
        words = ex.context.split("\n", 1)[1].split()
        counts = {w: words.count(w) for w in set(words)}
        ranked = sorted(counts.values(), reverse=True)
        assert sorted((counts[a] for a in ex.answers), reverse=True) == ranked[:3] and ranked[2] > ranked[3]
    # vartrack: following the chain from the value gives exactly the answers, in order
    for ex in tasks.make_examples("vartrack", 3, seed=2, context_length=900):
        value = re.search(r"value (\d+)", ex.question).group(1)
        chain = [re.search(rf"VAR (\w+) = {value}\.", ex.context).group(1)]
        while (m := re.search(rf"VAR (\w+) = VAR {chain[-1]}\.", ex.context)):
            chain.append(m.group(1))
        assert tuple(chain) == ex.answers


def test_character_and_token_lengths():
    words = lambda s: len(s.split())  # a stand-in tokenizer
    for ex in tasks.make_examples("passkey", 3, seed=0, context_length=300, length=words):
        assert 300 <= words(ex.context) <= 300 + 200
    short = tasks.make_examples("multikey", 1, context_length=200)[0]
    long = tasks.make_examples("multikey", 1, context_length=3000)[0]
    assert len(long.context) > 3000 > 1000 > len(short.context)


@pytest.mark.parametrize("pred, answers, scorer, expected", [
    ("The key is 123.", ["123"], "contains", True),
    ("1234", ["123"], "contains", False),
    ("ABC, def", ["abc", "DEF"], "contains_all", True),
    ("abc", ["abc", "def"], "contains_all", False),
    ("abc", ["abc", "def"], "contains", True),
    ("  Azure. ", ["azure"], "exact", True),
    ("azure sky", ["azure"], "exact", False),
    ("", ["x"], "contains", False),
])
def test_score_table(pred, answers, scorer, expected):
    assert tasks.score(scorer, pred, answers) is expected


def test_bad_arguments_name_themselves():
    with pytest.raises(InvalidInputError, match="`task` must be one of"):
        tasks.make_examples("needle", 1)
    with pytest.raises(InvalidTypeError, match="`n`"):
        tasks.make_examples("passkey", 1.5)
    with pytest.raises(InvalidInputError, match="`context_length` must be >= 1"):
        tasks.make_examples("passkey", 1, context_length=0)
    with pytest.raises(InvalidInputError, match="`scorer`"):
        tasks.score("fuzzy", "a", ["a"])
    with pytest.raises(InvalidInputError, match="`split`"):
        tasks.make_examples("passkey", 1, split="test")


def test_stdlib_haystack_is_the_same_in_a_fresh_interpreter():
    code = "from budgetopt import tasks; print(tasks.stdlib_paragraphs()[1]['sha256'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == tasks.stdlib_paragraphs()[1]["sha256"]
    assert tasks.stdlib_paragraphs()[1]["paragraphs"] > 200


def test_halves_are_disjoint_and_overlap_is_refused(tmp_path):
    evals = [e for t in tasks.TASKS for e in tasks.make_examples(t, 3, context_length=700)]
    cal_path = tmp_path / "cal.jsonl"
    cal_path.write_text("\n".join(tasks.calibration_lines(["passkey", "span"], 4, context_length=700)) + "\n")
    info = tasks.check_disjoint(evals, cal_path)
    assert info["overlaps"] == 0 and info["calibration_contexts"] == 8
    # the same generator on the same half overlaps, and one shared paragraph is enough
    bad = tmp_path / "bad.jsonl"
    para = [p for p in evals[0].context.split("\n\n") if len(p) >= 80][1]
    assert para in tasks.stdlib_paragraphs()[0]
    lines = [json.dumps({"context": "A calibration text of my own.\n\n" + para, "questions": ["q?"]})]
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidInputError, match=r"overlap the calibration contexts \(first: passkey-0000 "):
        tasks.check_disjoint(evals, bad)
    same = tmp_path / "same.jsonl"
    same.write_text(json.dumps({"context": evals[0].context, "questions": ["q?"]}) + "\n")
    with pytest.raises(InvalidInputError, match="1 evaluation context"):
        tasks.check_disjoint(evals[:1], same)


def test_user_examples(tmp_path):
    p = tmp_path / "ev.jsonl"
    p.write_text(
        json.dumps({"context": "Paris is in France.", "questions": ["Where is Paris?"], "answers": ["France"]}) + "\n"
        + json.dumps({"context": "Two.", "questions": [{"question": "a?", "answers": ["x"]}, "b?"],
                      "answers": [["x"], ["y", "z"]], "answer_prefix": "A:"}) + "\n")
    ex = tasks.read_examples(p)
    assert [e.answers for e in ex] == [("France",), ("x",), ("y", "z")]
    assert [e.id for e in ex] == ["user-c00000-q000", "user-c00001-q000", "user-c00001-q001"]
    assert ex[2].answer_prefix == "A:"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "c", "questions": ["q"]}) + "\n")
    with pytest.raises(InvalidInputError, match=r"bad.jsonl:1: questions\[0\] needs \"answers\""):
        tasks.read_examples(bad)
    bad.write_text(json.dumps({"context": "c", "questions": []}) + "\n")
    with pytest.raises(InvalidInputError, match=r"bad.jsonl:1: \"questions\""):
        tasks.read_examples(bad)


def test_user_examples_without_answers(tmp_path):
    """null marks a question without accepted answers, in each of the three places answers go."""
    p = tmp_path / "ev.jsonl"
    p.write_text(
        json.dumps({"context": "One.", "questions": ["a?", "b?", "c?"], "answers": [["x"], None, "y"]}) + "\n"
        + json.dumps({"context": "Two.", "questions": ["d?", {"question": "e?", "answers": ["z"]}],
                      "answers": None}) + "\n"
        + json.dumps({"context": "Three.", "questions": [{"question": "f?", "answers": None}, "g?"],
                      "answers": [["u"], ["v", "w"]]}) + "\n")
    ex = tasks.read_examples(p)
    assert [e.answers for e in ex] == [("x",), None, ("y",), None, ("z",), None, ("v", "w")]
    assert [e.answered for e in ex] == [a is not None for a in [e.answers for e in ex]]
    assert [e.question for e in ex] == ["a?", "b?", "c?", "d?", "e?", "f?", "g?"]
    assert ex[1].to_json()["answers"] is None and ex[0].to_json()["answers"] == ["x"]


@pytest.mark.parametrize("line, match", [
    ({"context": "c", "questions": ["q"]}, r'questions\[0\] needs "answers"'),  # missing: still an error
    ({"context": "c", "questions": ["q"], "answer": ["x"]}, r'questions\[0\] needs "answers"'),  # misspelt
    ({"context": "c", "questions": ["q"], "answers": 5}, r'"answers" must be a list'),
    ({"context": "c", "questions": ["q"], "answers": []}, r'questions\[0\] needs "answers"'),
    ({"context": "c", "questions": ["q", "r"], "answers": [["x"]]}, r'"answers" must be a list'),
    ({"context": "c", "questions": ["q", "r"], "answers": [["x"], 3]}, r'questions\[1\] needs "answers"'),
    ({"context": "c", "questions": ["q", "r"], "answers": [["x"], []]}, r'questions\[1\] needs "answers"'),
    ({"context": "c", "questions": ["q", "r"], "answers": [["x"], [""]]}, r'questions\[1\] needs "answers"'),
    ({"context": "c", "questions": [{"question": "q", "answers": {"a": 1}}]}, r'questions\[0\] needs "answers"'),
    ({"context": "c", "questions": [{"question": "q", "answers": [None]}]}, r'questions\[0\] needs "answers"'),
])
def test_user_examples_bad_answers_are_errors(tmp_path, line, match):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(line) + "\n")
    with pytest.raises(InvalidInputError, match=r"bad.jsonl:1: " + match):
        tasks.read_examples(bad)


def test_user_haystack_files(tmp_path):
    f = tmp_path / "h.txt"
    f.write_text("\n\n".join(f"Paragraph {i}: " + "words " * 20 for i in range(40)))
    paras, info = tasks.paragraphs_from_files([f])
    assert len(paras) == 40 and info["source"] == "files"
    ex = tasks.make_examples("passkey", 1, paragraphs=paras, context_length=500)[0]
    assert "Paragraph" in ex.context
    (tmp_path / "s.txt").write_text("short")
    with pytest.raises(InvalidInputError, match="need 8 or more"):
        tasks.paragraphs_from_files([tmp_path / "s.txt"])
