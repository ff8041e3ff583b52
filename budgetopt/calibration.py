"""Calibration files: the contexts and questions a model is profiled on (JSON lines).

Each non-blank line of the file is one JSON object, a context with its questions::

    {"context": "long text ...", "questions": ["What is ...?", "Summarise ..."]}
    {"id": "doc-7", "context": "...", "questions": [{"question": "Who ...?", "answer_prefix": "Answer:"}]}

A question is a string or an object ``{"question": str, "answer_prefix": str}`` (the prefix
is optional); ``"answer_prefix"`` at the top level applies to every question of the line that
has none. ``"id"`` (a string or integer) is optional. Other keys are ignored. Pairs are
numbered in file order: contexts in order, each context's questions in order.

**Probes.** A line may also carry ``"probes"``: generic queries profiled over the context
like questions (their oracles say where a request's attention goes before its question is
known), as a list of non-empty strings, or ``true`` for :data:`DEFAULT_PROBES`; and
``"probe_tokens"``: the tokens each probe generates (its decode steps, default
:data:`DEFAULT_PROBE_TOKENS`). Probes are not pairs: :meth:`Calibration.pairs` and every table
built from the real questions ignore them (:meth:`Calibration.probe_pairs` lists them).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from ._io import loads_json
from .curves import check_input_file
from .errors import InvalidInputError

__all__ = ["Calibration", "CalibrationContext", "read_calibration", "DEFAULT_PROBES", "DEFAULT_PROBE_TOKENS"]

#: The generic probes of ``"probes": true``: a summary, a topic and a repeat request (KVzip's
#: probe). Each is answered by the model like a question, with no answer prefix.
DEFAULT_PROBES = ("Summarize the text above.", "What is the main topic of the text above?",
                  "Repeat the previous context.")
#: Tokens a probe generates when a line gives no ``"probe_tokens"``.
DEFAULT_PROBE_TOKENS = 32


@dataclass(frozen=True)
class CalibrationContext:
    """One line of a calibration file.

    Attributes
    ----------
    context : str
        The text every question is about (profiled on its own at prefill).
    questions : tuple of str
    answer_prefixes : tuple of str
        One per question (``""`` when none is given).
    id : str or None
        The line's ``"id"`` (as a string), if any.
    line : int
        Line number in the file (1-based), for error messages.
    probes : tuple of str
        The line's probe queries (empty when it has none).
    probe_tokens : int or None
        Tokens each probe generates (None when the line has no probes).
    """

    context: str
    questions: tuple
    answer_prefixes: tuple
    id: str | None
    line: int
    probes: tuple = ()
    probe_tokens: int | None = None


@dataclass(frozen=True)
class Calibration:
    """A parsed calibration file (see :func:`read_calibration`).

    Attributes
    ----------
    path : str
    sha256 : str
        Hex digest of the file's bytes; recorded with every profile run and table.
    contexts : tuple of CalibrationContext
    """

    path: str
    sha256: str
    contexts: tuple

    @property
    def n_pairs(self):
        """Number of (context, question) pairs."""
        return sum(len(c.questions) for c in self.contexts)

    def pairs(self):
        """``[(context_index, question_index), ...]`` in global pair order."""
        return [(c, q) for c, ctx in enumerate(self.contexts) for q in range(len(ctx.questions))]

    @property
    def n_probes(self):
        """Number of (context, probe) pairs."""
        return sum(len(c.probes) for c in self.contexts)

    def probe_pairs(self):
        """``[(context_index, probe_index), ...]`` in global probe order (contexts in order)."""
        return [(c, p) for c, ctx in enumerate(self.contexts) for p in range(len(ctx.probes))]


def read_calibration(path):
    """Read and check a calibration file (JSON lines, UTF-8).

    Parameters
    ----------
    path : str or os.PathLike
        One JSON object per non-blank line: ``{"context": str, "questions": [...]}``, each
        question a string or ``{"question": str, "answer_prefix": str}``; optional ``"id"``,
        top-level ``"answer_prefix"``, ``"probes"`` (a list of strings, or ``true`` for
        :data:`DEFAULT_PROBES`) and ``"probe_tokens"`` (a whole number >= 1). Other keys are
        ignored.

    Returns
    -------
    Calibration

    Raises
    ------
    CurvesFileError
        The file is missing or a directory.
    InvalidInputError
        The file is empty, not UTF-8, or a line is not a JSON object, lacks a non-empty
        string ``"context"``, or has no questions / a question that is not a non-empty
        string, or bad ``"probes"`` / ``"probe_tokens"``. The message starts with ``path:line:``.

    Notes
    -----
    O(file size). Never evaluates anything but JSON.

    Examples
    --------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "calib.jsonl")
    >>> with open(p, "w") as f:
    ...     _ = f.write('{"context": "The cat sat.", "questions": ["Who sat?", '
    ...                 '{"question": "Where?", "answer_prefix": "On"}]}\\n')
    >>> cal = read_calibration(p)
    >>> cal.n_pairs, cal.contexts[0].answer_prefixes
    (2, ('', 'On'))
    >>> with open(p, "w") as f:
    ...     _ = f.write('{"context": "The cat sat.", "questions": ["Who sat?"], "probes": true, '
    ...                 '"probe_tokens": 8}\\n')
    >>> cal = read_calibration(p)
    >>> cal.n_pairs, cal.n_probes, cal.contexts[0].probe_tokens
    (1, 3, 8)
    """
    path = check_input_file(path, "calibration file (JSON lines)")
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    contexts = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{where}: not valid UTF-8 ({exc.reason})") from None
        if not text.strip():
            continue
        obj = loads_json(text, where, error=InvalidInputError, standard=False)
        contexts.append(_parse_line(obj, where, number))
    if not contexts:
        raise InvalidInputError(
            f"{path}: empty calibration file; expected one JSON object per line, "
            '{"context": ..., "questions": [...]}'
        )
    return Calibration(path=os.fspath(path), sha256=digest, contexts=tuple(contexts))


def _parse_line(obj, where, number):
    if not isinstance(obj, dict):
        raise InvalidInputError(
            f'{where}: each line must be a JSON object {{"context": ..., "questions": [...]}}; '
            f"got {type(obj).__name__}"
        )
    context = obj.get("context")
    if not isinstance(context, str) or not context:
        raise InvalidInputError(
            f'{where}: "context" must be a non-empty string; '
            + ("it is missing" if "context" not in obj else f"got {_kind(context)}")
        )
    default_prefix = obj.get("answer_prefix", "")
    if not isinstance(default_prefix, str):
        raise InvalidInputError(f'{where}: "answer_prefix" must be a string; got {_kind(default_prefix)}')
    questions = obj.get("questions")
    if not isinstance(questions, list) or not questions:
        raise InvalidInputError(
            f'{where}: "questions" must be a non-empty list of strings or '
            '{"question": ..., "answer_prefix": ...} objects; '
            + ("it is missing" if "questions" not in obj else f"got {_kind(questions)}")
        )
    texts, prefixes = [], []
    for i, item in enumerate(questions):
        prefix = default_prefix
        if isinstance(item, dict):
            prefix = item.get("answer_prefix", default_prefix)
            if not isinstance(prefix, str):
                raise InvalidInputError(
                    f'{where}: questions[{i}]["answer_prefix"] must be a string; got {_kind(prefix)}'
                )
            item = item.get("question")
        if not isinstance(item, str) or not item:
            raise InvalidInputError(
                f"{where}: questions[{i}] must be a non-empty string or an object with a non-empty "
                f'"question" string; got {_kind(item)}'
            )
        texts.append(item)
        prefixes.append(prefix)
    ident = obj.get("id")
    if ident is not None and (isinstance(ident, bool) or not isinstance(ident, (str, int))):
        raise InvalidInputError(f'{where}: "id" must be a string or an integer; got {_kind(ident)}')
    probes, probe_tokens = _parse_probes(obj, where)
    for name, value in (("context", context), *((f"questions[{i}]", t) for i, t in enumerate(texts)),
                        *((f"questions[{i}] answer_prefix", p) for i, p in enumerate(prefixes)),
                        *((f"probes[{i}]", t) for i, t in enumerate(probes))):
        _check_text(value, where, name)
    return CalibrationContext(
        context=context,
        questions=tuple(texts),
        answer_prefixes=tuple(prefixes),
        id=None if ident is None else str(ident),
        line=number,
        probes=probes,
        probe_tokens=probe_tokens,
    )


def _parse_probes(obj, where):
    """``(probes, probe_tokens)`` of a line: ``((), None)`` without probes."""
    probes = obj.get("probes", False)
    if probes is True:
        probes = list(DEFAULT_PROBES)
    elif probes is False or probes is None:
        probes = []
    elif not isinstance(probes, list) or not probes:
        raise InvalidInputError(
            f'{where}: "probes" must be true (the default probes) or a non-empty list of strings; '
            f"got {_kind(probes)}"
        )
    for i, text in enumerate(probes):
        if not isinstance(text, str) or not text:
            raise InvalidInputError(f'{where}: probes[{i}] must be a non-empty string; got {_kind(text)}')
    if "probe_tokens" not in obj:
        return tuple(probes), (DEFAULT_PROBE_TOKENS if probes else None)
    tokens = obj["probe_tokens"]
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= 2**20:
        raise InvalidInputError(f'{where}: "probe_tokens" must be a whole number in [1, 2**20]; got {tokens!r}')
    if not probes:
        raise InvalidInputError(f'{where}: "probe_tokens" is given but the line has no "probes"')
    return tuple(probes), tokens


def _check_text(value, where, name):
    """Refuse text that is not Unicode a tokenizer can take: a lone surrogate (``"\\ud800"``
    in the JSON) has no UTF-8 form."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{where}: {name} holds a lone surrogate ({value[exc.start]!r} at character {exc.start}), "
            "which is not text; fix the JSON escape"
        ) from None


def _kind(value):
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return {bool: "a boolean", int: "a number", float: "a number", dict: "an object"}.get(type(value), type(value).__name__)
