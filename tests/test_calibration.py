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
