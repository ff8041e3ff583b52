"""Calibration files (JSON lines): parsing, and errors that name the file and the line."""

import hashlib
import json

import pytest

from budgetopt import read_calibration
from budgetopt.errors import CurvesFileError, InvalidInputError


def _write(tmp_path, text, name="calib.jsonl"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


def test_reads_contexts_questions_prefixes_and_ids(tmp_path):
    lines = [
        {"context": "Alpha text.", "questions": ["Q1?", "Q2?"], "answers": ["ignored"]},
        {"id": 7, "context": "Beta text.", "answer_prefix": "A:",
         "questions": [{"question": "Q3?"}, {"question": "Q4?", "answer_prefix": "B:"}, "Q5?"]},
    ]
    text = json.dumps(lines[0]) + "\n\n   \n" + json.dumps(lines[1]) + "\n"
    path = _write(tmp_path, text)
    cal = read_calibration(path)
    assert cal.path == path
    assert cal.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert [c.context for c in cal.contexts] == ["Alpha text.", "Beta text."]
    assert cal.contexts[0].questions == ("Q1?", "Q2?") and cal.contexts[0].answer_prefixes == ("", "")
    assert cal.contexts[1].questions == ("Q3?", "Q4?", "Q5?")
    assert cal.contexts[1].answer_prefixes == ("A:", "B:", "A:")
    assert (cal.contexts[0].id, cal.contexts[1].id) == (None, "7")
    assert (cal.contexts[0].line, cal.contexts[1].line) == (1, 4)
    assert cal.n_pairs == 5
    assert cal.pairs() == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]


GOOD = '{"context": "c", "questions": ["q"]}\n'


@pytest.mark.parametrize(
    "text,match",
    [
        ("", r"calib.jsonl: empty calibration file"),
        ("\n  \n", r"calib.jsonl: empty calibration file"),
        (GOOD + "{not json}\n", r"calib.jsonl:2: not valid JSON"),
        (GOOD + GOOD + "[1, 2]\n", r"calib.jsonl:3: each line must be a JSON object.*got list"),
        ('{"questions": ["q"]}\n', r"calib.jsonl:1: \"context\" must be a non-empty string; it is missing"),
        ('{"context": 5, "questions": ["q"]}\n', r":1: \"context\" must be a non-empty string; got a number"),
        ('{"context": "", "questions": ["q"]}\n', r":1: \"context\" must be a non-empty string; got an empty string"),
        (GOOD + '{"context": "c"}\n', r"calib.jsonl:2: \"questions\" must be a non-empty list.*it is missing"),
        ('{"context": "c", "questions": []}\n', r":1: \"questions\" must be a non-empty list.*got an empty list"),
        ('{"context": "c", "questions": "q"}\n', r":1: \"questions\" must be a non-empty list.*got a string"),
        ('{"context": "c", "questions": ["q", 3]}\n', r":1: questions\[1\] must be a non-empty string.*got a number"),
        ('{"context": "c", "questions": [""]}\n', r":1: questions\[0\] must be a non-empty string"),
        ('{"context": "c", "questions": [{"answer_prefix": "x"}]}\n', r":1: questions\[0\] must be.*got null"),
        ('{"context": "c", "questions": [{"question": "q", "answer_prefix": 1}]}\n',
         r":1: questions\[0\]\[\"answer_prefix\"\] must be a string"),
        ('{"context": "c", "questions": ["q"], "answer_prefix": null}\n', r":1: \"answer_prefix\" must be a string"),
        ('{"context": "c", "questions": ["q"], "id": [1]}\n', r":1: \"id\" must be a string or an integer"),
        (GOOD.encode() + b'{"context": "\xff", "questions": ["q"]}\n', r"calib.jsonl:2: not valid UTF-8"),
    ],
)
def test_errors_name_file_and_line(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(InvalidInputError, match=match):
        read_calibration(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CurvesFileError, match=r"nope.jsonl: no such file"):
        read_calibration(tmp_path / "nope.jsonl")
    with pytest.raises(CurvesFileError, match=r"is a directory"):
        read_calibration(tmp_path)


# -- probes ------------------------------------------------------------------------------------
def test_probes_true_list_tokens_and_absent(tmp_path):
    from budgetopt.calibration import DEFAULT_PROBE_TOKENS, DEFAULT_PROBES

    path = _write(tmp_path, '{"context": "c", "questions": ["q"]}\n'
                            '{"context": "d", "questions": ["q", "r"], "probes": true}\n'
                            '{"context": "e", "questions": ["q"], "probes": ["Sum up.", "Topic?"], "probe_tokens": 5}\n'
                            '{"context": "f", "questions": ["q"], "probes": false}\n')
    cal = read_calibration(path)
    a, b, c, d = cal.contexts
    assert (a.probes, a.probe_tokens, d.probes, d.probe_tokens) == ((), None, (), None)
    assert b.probes == DEFAULT_PROBES and b.probe_tokens == DEFAULT_PROBE_TOKENS
    assert c.probes == ("Sum up.", "Topic?") and c.probe_tokens == 5
    # probes are never pairs
    assert cal.n_pairs == 5 and cal.pairs() == [(0, 0), (1, 0), (1, 1), (2, 0), (3, 0)]
    assert cal.n_probes == 5 and cal.probe_pairs() == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]


@pytest.mark.parametrize(
    "extra,match",
    [
        ('"probes": []', r':1: "probes" must be true \(the default probes\) or a non-empty list of strings; got an '
                         r'empty list'),
        ('"probes": "Sum up."', r':1: "probes" must be true.*got a string'),
        ('"probes": ["ok", 3]', r":1: probes\[1\] must be a non-empty string; got a number"),
        ('"probes": [""]', r":1: probes\[0\] must be a non-empty string; got an empty string"),
        ('"probes": true, "probe_tokens": 0', r':1: "probe_tokens" must be a whole number in \[1, 2\*\*20\]; got 0'),
        ('"probes": true, "probe_tokens": 2.5', r':1: "probe_tokens" must be a whole number.*got 2.5'),
        ('"probes": true, "probe_tokens": true', r':1: "probe_tokens" must be a whole number.*got True'),
        ('"probe_tokens": 4', r':1: "probe_tokens" is given but the line has no "probes"'),
        ('"probes": ["\\ud800"]', r":1: probes\[0\] holds a lone surrogate"),
    ],
)
def test_probe_errors_name_file_and_line(tmp_path, extra, match):
    path = _write(tmp_path, '{"context": "c", "questions": ["q"], ' + extra + "}\n")
    with pytest.raises(InvalidInputError, match=match):
        read_calibration(path)
