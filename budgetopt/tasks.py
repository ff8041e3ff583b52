"""Evaluation tasks: seeded RULER-style examples built by code, user examples, and their scorers.

Every example is a context, a question about it and the accepted answers. Generated tasks
(RULER, Hsieh et al. 2024, rebuilt here from its task descriptions):

=============  ===================================================================  ==========
task           what the model must do                                               scorer
=============  ===================================================================  ==========
``passkey``    find the one pass key hidden in the text                             contains
``multikey``   several "magic number for KEY" needles; give the one for a key       contains
``multivalue`` one key holds several magic numbers; give them all                   contains all
``vartrack``   follow ``VAR X = ...`` assignment chains; name every variable of a   contains all
               value
``common``     a numbered word list; the three words repeated most                  contains all
``frequent``   Zipf-distributed coded words; the three most frequent                contains all
``span``       look a record up: the answer is a word of the document (a span)      contains
=============  ===================================================================  ==========

Each generated question comes with an answer prefix that starts the answer (RULER's
practice: ``"The pass key is"``), so the model's next tokens are the answer itself and a short
``max_new_tokens`` suffices.

Haystacks (the filler text) come from Python's own docstrings (:func:`stdlib_paragraphs`)
or from the user's text files (:func:`paragraphs_from_files`). Each example is a function of
``(task, seed, index, split, target length)`` only, so example 7 is the same whether 10 or
100 are asked for. The haystack is split into two disjoint halves by a hash of each
paragraph: ``split="eval"`` and ``split="calibration"`` never share a paragraph, so a
calibration file made from the second never overlaps the evaluation contexts
(:func:`check_disjoint` checks any pair of files).

Only the standard library and numpy: no tokenizer is needed (``length`` counts characters
unless a token counter is given).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError, InvalidTypeError

__all__ = [
    "TASKS",
    "Example",
    "make_examples",
    "score",
    "stdlib_paragraphs",
    "paragraphs_from_files",
    "read_examples",
    "context_hash",
    "check_disjoint",
    "calibration_lines",
]

#: Task names, in the order reports list them.
TASKS = ("passkey", "multikey", "multivalue", "vartrack", "common", "frequent", "span")

#: Scorer of each task (see :func:`score`).
SCORERS = {"passkey": "contains", "multikey": "contains", "multivalue": "contains_all",
           "vartrack": "contains_all", "common": "contains_all", "frequent": "contains_all",
           "span": "contains", "user": "contains"}

#: Stdlib modules whose docstrings make the default haystack. Pure-Python modules that exist
#: on every platform, whose public names do not depend on the operating system; the text
#: therefore depends on the Python minor version only (``stdlib_paragraphs`` records it).
STDLIB_MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "collections", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "difflib", "email.message", "enum", "fractions",
    "functools", "gettext", "glob", "heapq", "html.parser", "inspect", "ipaddress", "json",
    "logging", "numbers", "operator", "optparse", "pathlib", "pickletools", "pprint", "queue",
    "random", "shlex", "statistics", "string", "tarfile", "textwrap", "threading", "tokenize",
    "unittest.case", "urllib.parse", "uuid", "warnings", "wave", "zipfile",
)

_MIN_PARAGRAPH = 80  # characters; shorter docstring paragraphs (signatures, one-liners) are dropped

_NOUNS = (
    "apple", "anchor", "badge", "basket", "beacon", "bridge", "candle", "canyon", "castle", "cipher",
    "comet", "compass", "copper", "crystal", "dragon", "falcon", "feather", "forest", "galaxy",
    "garden", "glacier", "harbor", "helmet", "island", "jacket", "kettle", "ladder", "lantern",
    "marble", "meadow", "mirror", "needle", "orchid", "palace", "pepper", "pillow", "planet",
    "pocket", "quartz", "rabbit", "ribbon", "river", "saddle", "shadow", "signal", "silver",
    "spider", "statue", "summit", "temple", "thunder", "ticket", "tunnel", "velvet", "violin",
    "walnut", "window", "winter", "wizard", "yogurt",
)
_COLOURS = ("amber", "azure", "beige", "coral", "crimson", "cyan", "golden", "green", "indigo",
            "ivory", "lilac", "magenta", "maroon", "olive", "orange", "purple", "scarlet", "teal",
            "turquoise", "violet", "yellow")
_WORDS_CACHE = {}


@dataclass(frozen=True)
class Example:
    """One evaluation example.

    Attributes
    ----------
    task : str
        A name of :data:`TASKS`, or ``"user"`` for a line of the user's file.
    index : int
        Its number within the task (generated) or the pair number (user file).
    context, question : str
        The context is compressed; the question is asked after it (or inside it, in the
        query-aware setting).
    answers : tuple of str or None
        Accepted answers (``contains``) or the items that must all appear (``contains_all``);
        ``None`` for a question of the user's file that has no accepted answer (it is not
        scored: its accuracy is not applicable, see :attr:`answered`).
    scorer : str
        ``"contains"``, ``"contains_all"`` or ``"exact"`` (:func:`score`).
    answer_prefix : str
    id : str
        A stable name: ``"passkey-0007"`` or ``"user-c00003-q000"``.
    """

    task: str
    index: int
    context: str
    question: str
    answers: tuple
    scorer: str
    answer_prefix: str = ""
    id: str = ""

    @property
    def answered(self):
        """Whether the example has accepted answers, so that its answers can be scored."""
        return self.answers is not None

    @property
    def context_sha256(self):
        """:func:`context_hash` of the context."""
        return context_hash(self.context)

    def to_json(self):
        """A JSON-ready dict (every field, plus the context hash)."""
        return {"id": self.id, "task": self.task, "index": self.index, "question": self.question,
                "answers": None if self.answers is None else list(self.answers), "scorer": self.scorer, "answer_prefix": self.answer_prefix,
                "context_sha256": self.context_sha256, "context_chars": len(self.context)}


def context_hash(text):
    """SHA-256 hex digest of ``text`` in UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- scorers -------------------------------------------------------------------------------------
def _norm(text):
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def score(scorer, prediction, answers):
    """Whether ``prediction`` answers correctly.

    Case, punctuation and spacing are ignored (both sides lowercased, punctuation turned into
    spaces, runs of spaces collapsed). ``"contains"``: some answer appears in the prediction
    as whole words; ``"contains_all"``: every answer does; ``"exact"``: the prediction equals
    an answer.

    Examples
    --------
    >>> score("contains", "The pass key is 58213.", ["58213"])
    True
    >>> score("contains", "582130", ["58213"])
    False
    >>> score("contains_all", "apple, comet", ["comet", "apple", "river"])
    False
    >>> score("exact", " Comet! ", ["comet"])
    True
    """
    if scorer not in ("contains", "contains_all", "exact"):
        raise InvalidInputError(f"`scorer` must be 'contains', 'contains_all' or 'exact'; got {scorer!r}")
    pred = f" {_norm(prediction)} "
    found = [f" {_norm(a)} " in pred if _norm(a) else False for a in answers]
    if scorer == "exact":
        return any(_norm(prediction) == _norm(a) for a in answers)
    return bool(found) and (all(found) if scorer == "contains_all" else any(found))


# -- haystacks -------------------------------------------------------------------------------------
def _paragraphs(text):
    out = []
    for block in re.split(r"\n\s*\n", text):
        para = " ".join(block.split())
        if len(para) >= _MIN_PARAGRAPH and not para.startswith((">>>", "...")):
            out.append(para)
    return out


def stdlib_paragraphs():
    """Paragraphs of the docstrings of :data:`STDLIB_MODULES` (module, then its public
    classes and functions by name), deduplicated in first-seen order.

    Deterministic for a given Python minor version: the module list is fixed and only
    names defined in each module itself are read, so installed packages and the operating
    system do not change it. Returns ``(paragraphs, info)`` where ``info`` records the Python
    version and a hash of the text.
    """
    key = ("stdlib", sys.version_info[:2])
    if key not in _WORDS_CACHE:
        seen, out = set(), []
        for name in STDLIB_MODULES:
            module = importlib.import_module(name)
            docs = [module.__doc__ or ""]
            for attr in sorted(n for n in vars(module) if not n.startswith("_")):
                obj = vars(module)[attr]
                if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == name:
                    docs.append(obj.__doc__ or "")
            for doc in docs:
                for para in _paragraphs(doc):
                    if para not in seen:
                        seen.add(para)
                        out.append(para)
        info = {"source": "stdlib docstrings", "python": "%d.%d" % sys.version_info[:2],
                "paragraphs": len(out), "sha256": context_hash("\n\n".join(out))}
        _WORDS_CACHE[key] = (tuple(out), info)
    return _WORDS_CACHE[key]


def paragraphs_from_files(paths):
    """Paragraphs (blocks separated by blank lines, at least 80 characters) of UTF-8 text files,
    in the order given; ``(paragraphs, info)`` as :func:`stdlib_paragraphs`."""
    from ._io import check_input_file

    out = []
    for path in paths:
        path = check_input_file(path, "haystack text file")
        try:
            text = open(path, encoding="utf-8").read()
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{path}: not valid UTF-8 ({exc.reason})") from None
        out.extend(_paragraphs(text))
    if len(out) < 8:
        raise InvalidInputError(
            f"haystack files give {len(out)} paragraph(s) of at least {_MIN_PARAGRAPH} characters; need 8 or more")
    info = {"source": "files", "files": [os.path.basename(os.fspath(p)) for p in paths],
            "paragraphs": len(out), "sha256": context_hash("\n\n".join(out))}
    return tuple(out), info


def _split(paragraphs, split):
    """The half of ``paragraphs`` that belongs to ``split`` (by the parity of a hash byte)."""
    if split not in ("eval", "calibration"):
        raise InvalidInputError(f"`split` must be 'eval' or 'calibration'; got {split!r}")
    want = 0 if split == "eval" else 1
    return [p for p in paragraphs if hashlib.sha256(p.encode("utf-8")).digest()[0] % 2 == want]


# -- generators --------------------------------------------------------------------------------------
def _number(rng, digits=7):
    return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))


def _fill(rng, pool, target, length, needles):
    """Paragraphs from a random start in ``pool`` until the text reaches ``target`` (by
    ``length``), with each needle sentence inserted between paragraphs at a random depth."""
    start = int(rng.integers(len(pool)))
    need = target - sum(length(n) for n in needles)
    chosen, total, i = [], 0, 0
    while total < need:
        para = pool[(start + i) % len(pool)]
        chosen.append(para)
        total += length(para) + 1
        i += 1
        if i > 100 * len(pool):  # pragma: no cover - lengths that never grow
            break
    slots = sorted(int(s) for s in rng.integers(0, len(chosen) + 1, size=len(needles)))
    for offset, (slot, needle) in enumerate(zip(slots, needles)):
        chosen.insert(slot + offset, needle)
    return "\n\n".join(chosen)


def _passkey(rng, pool, target, length):
    key = _number(rng, 5)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    return (_fill(rng, pool, target, length, [needle]),
            "What is the pass key? Answer with the number only.", (key,), "The pass key is")


def _keys(rng, n):
    return [str(w) for w in rng.choice(_NOUNS, size=n, replace=False)]


def _multikey(rng, pool, target, length):
    keys = _keys(rng, 4)
    values = [_number(rng) for _ in keys]
    needles = [f"One of the special magic numbers for {k} is: {v}." for k, v in zip(keys, values)]
    ask = int(rng.integers(len(keys)))
    return (_fill(rng, pool, target, length, needles),
            f"What is the special magic number for {keys[ask]}? Answer with the number only.", (values[ask],),
            f"The special magic number for {keys[ask]} is")


def _multivalue(rng, pool, target, length):
    key = _keys(rng, 1)[0]
    values = [_number(rng) for _ in range(3)]
    needles = [f"One of the special magic numbers for {key} is: {v}." for v in values]
    return (_fill(rng, pool, target, length, needles),
            f"What are all the special magic numbers for {key}? List them.", tuple(values),
            f"The special magic numbers for {key} are")


def _varname(rng):
    return "".join(chr(ord("A") + int(c)) for c in rng.integers(0, 26, size=5))


def _vartrack(rng, pool, target, length):
    names = []
    while len(names) < 4:
        name = _varname(rng)
        if name not in names:
            names.append(name)
    value = _number(rng, 5)
    needles = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    # the chain must read in order: _fill inserts needles at sorted depths, in this order
    return (_fill(rng, pool, target, length, needles),
            f"Which variables are assigned the value {value}? List every variable name.", tuple(names),
            f"The variables assigned the value {value} are")


def _vocabulary(pool):
    key = ("vocab", id(pool))
    if key not in _WORDS_CACHE:
        words = sorted({w for p in pool for w in re.findall(r"\b[a-z]{5,10}\b", p)})
        _WORDS_CACHE[key] = words
    return _WORDS_CACHE[key]


def _numbered(words, target, length):
    """A numbered word list ``1. word`` grown until it reaches ``target``."""
    lines, total = [], 0
    for i, w in enumerate(words):
        line = f"{i + 1}. {w}"
        lines.append(line)
        total += length(line) + 1
        if total >= target:
            break
    return lines


def _common(rng, pool, target, length):
    vocab = _vocabulary(pool)
    top = [str(w) for w in rng.choice(vocab, size=3, replace=False)]
    rest = [w for w in vocab if w not in top]
    sample = [str(w) for w in rng.choice(rest, size=min(len(rest), 4000), replace=False)]
    n_lines = max(len(_numbered(sample, target, length)), 30)  # lines that reach the target
    copies = max(n_lines // 20, 4)  # each of the three words: 5% of the list, at least 4 times
    words = top * copies + sample[: max(n_lines - 3 * copies, 0)]
    words = [words[i] for i in rng.permutation(len(words))]
    lines = [f"{i + 1}. {w}" for i, w in enumerate(words)]
    ranked = sorted(top)
    text = "Below is a numbered list of words.\n" + "\n".join(lines)
    return (text, "What are the 3 most common words in the list above? Answer with the three words.", tuple(ranked),
            "The three most common words are")


def _frequent(rng, pool, target, length):
    coded = []
    while len(coded) < 400:
        word = "".join(chr(ord("a") + int(c)) for c in rng.integers(0, 26, size=5))
        if word not in coded:
            coded.append(word)
    per_word = max(length("abcde "), 1)
    n = max(int(target / per_word), 60)
    # Zipf weights with the three first words clearly ahead
    weights = 1.0 / np.arange(1, len(coded) + 1) ** 1.3
    draws = rng.choice(len(coded), size=n, p=weights / weights.sum())
    words = [coded[i] for i in draws]
    counts = np.bincount(draws, minlength=len(coded))
    ranked = np.argsort(-counts, kind="stable")[:3]
    if len(set(counts[ranked])) < 3 or counts[ranked[2]] == counts[np.argsort(-counts, kind="stable")[3]]:
        # make the top three unambiguous: add copies of the leaders
        extra = [coded[ranked[0]]] * 3 + [coded[ranked[1]]] * 2 + [coded[ranked[2]]]
        words += extra
        counts[ranked[0]] += 3
        counts[ranked[1]] += 2
        counts[ranked[2]] += 1
        words = [words[i] for i in rng.permutation(len(words))]
    text = ("Read the following coded text and track how often each coded word appears.\n"
            + " ".join(words))
    answers = tuple(coded[i] for i in np.argsort(-counts, kind="stable")[:3])
    return (text, "What are the 3 most frequently appearing coded words in the text above? "
            "Answer with the three words.", answers, "The three most frequent coded words are")


def _span(rng, pool, target, length):
    objects = _keys(rng, 6)
    colours = [str(c) for c in rng.choice(_COLOURS, size=len(objects), replace=False)]
    needles = [f"Inventory note: the {o} in the storeroom is {c}." for o, c in zip(objects, colours)]
    ask = int(rng.integers(len(objects)))
    return (_fill(rng, pool, target, length, needles),
            f"According to the inventory notes, what colour is the {objects[ask]}? Answer with one word.",
            (colours[ask],), f"The {objects[ask]} in the storeroom is")


_GENERATORS = {"passkey": _passkey, "multikey": _multikey, "multivalue": _multivalue, "vartrack": _vartrack,
               "common": _common, "frequent": _frequent, "span": _span}


def make_examples(task, n, *, seed=0, context_length=1000, length=len, paragraphs=None, split="eval",
                  start=0):
    """``n`` seeded examples of a generated task.

    Parameters
    ----------
    task : str
        One of :data:`TASKS`.
    n : int
        Number of examples (numbered ``start .. start + n - 1``).
    seed : int, default 0
    context_length : int, default 1000
        Target length of each context, in the units of ``length``; contexts end at the first
        paragraph (or list line) that reaches it, so they are slightly longer.
    length : callable, default len
        ``length(text) -> int``: characters by default, or a token counter such as
        ``lambda s: len(tokenizer.encode(s, add_special_tokens=False))``. It is called on
        paragraphs, so a token count is approximate (tokens at paragraph joins).
    paragraphs : sequence of str, optional
        The haystack; default :func:`stdlib_paragraphs`.
    split : {"eval", "calibration"}, default "eval"
        Which half of the haystack to use; the halves share no paragraph.
    start : int, default 0

    Returns
    -------
    list of Example

    Notes
    -----
    Example ``i`` draws from ``numpy.random.default_rng([seed, task number, i, split])``,
    so it does not depend on ``n``. Cost: O(context_length) per example.

    Examples
    --------
    >>> ex = make_examples("passkey", 2, seed=1, context_length=400)
    >>> [e.id for e in ex]
    ['passkey-0000', 'passkey-0001']
    >>> ex[0].answers[0] in ex[0].context and score(ex[0].scorer, ex[0].answers[0], ex[0].answers)
    True
    >>> make_examples("passkey", 1, seed=1, context_length=400)[0] == ex[0]
    True
    """
    if task not in _GENERATORS:
        raise InvalidInputError(f"`task` must be one of {', '.join(TASKS)}; got {task!r}")
    for name, value in (("n", n), ("seed", seed), ("context_length", context_length), ("start", start)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidTypeError(f"`{name}` must be an integer; got {value!r}")
        if value < (1 if name == "context_length" else 0):
            raise InvalidInputError(f"`{name}` must be >= {1 if name == 'context_length' else 0}; got {value}")
    if not callable(length):
        raise InvalidTypeError(f"`length` must be a function of a string; got {type(length).__name__}")
    if paragraphs is None:
        paragraphs = stdlib_paragraphs()[0]
    pool = _split(list(paragraphs), split)
    if len(pool) < 4:
        raise InvalidInputError(f"the haystack's {split!r} half has {len(pool)} paragraph(s); need 4 or more")
    measured = {}

    def cached(text):
        if text not in measured:
            measured[text] = int(length(text))
        return measured[text]

    task_number = TASKS.index(task)
    out = []
    for i in range(start, start + n):
        rng = np.random.default_rng([int(seed), task_number, i, 0 if split == "eval" else 1])
        context, question, answers, prefix = _GENERATORS[task](rng, pool, int(context_length), cached)
        out.append(Example(task=task, index=i, context=context, question=question, answers=tuple(answers),
                           scorer=SCORERS[task], answer_prefix=prefix, id=f"{task}-{i:04d}"))
    return out


# -- user files ----------------------------------------------------------------------------------------
def read_examples(path):
    """Examples from the user's JSON lines: the calibration format plus answers.

    Each line is read by :func:`budgetopt.read_calibration`'s rules (``context``,
    ``questions``, optional ``answer_prefix`` and ``id``) and must also give the accepted
    answers of every question: ``"answers"`` inside a question object, or a top-level
    ``"answers"`` that is a list with one list of strings per question (a plain list of
    strings when the line has one question). Scorer: ``contains``.

    A question with no accepted answer (a summary, an explanation) says so with ``null``:
    ``"answers": null`` in its question object, ``null`` as its entry of the top-level list,
    or a top-level ``"answers": null`` for every question of the line. Its example has
    ``answers=None``: ``budgetopt evaluate`` measures agreement, KL and NLL against the
    full-cache answer on it, and leaves it out of accuracy and the correctness tests. A
    missing ``"answers"`` stays an error, so that a misspelt key is not read as "no answer".

    Raises
    ------
    InvalidInputError
        As :func:`~budgetopt.read_calibration`, or a question without ``"answers"``, or
        answers that are neither ``null`` nor a non-empty list of non-empty strings; messages
        start with ``path:line:``.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "data.jsonl")
    >>> with open(path, "w") as f:
    ...     _ = f.write('{"context": "The cat sat on the mat.", "questions": ["Where did the cat sit?", '
    ...                 '"Describe the scene."], "answers": [["mat"], null]}\\n')
    >>> [(e.id, e.answers, e.answered) for e in read_examples(path)]
    [('user-c00000-q000', ('mat',), True), ('user-c00000-q001', None, False)]
    """
    from .calibration import read_calibration

    calibration = read_calibration(path)
    with open(calibration.path, "rb") as f:
        lines = f.read().split(b"\n")
    out = []
    for c, ctx in enumerate(calibration.contexts):
        where = f"{calibration.path}:{ctx.line}"
        obj = json.loads(lines[ctx.line - 1].decode("utf-8"))
        has_top = "answers" in obj
        top = obj.get("answers")
        if top is None and has_top:
            top = [None] * len(ctx.questions)  # "answers": null: no question of the line has answers
        elif top is not None and len(ctx.questions) == 1 and isinstance(top, list) and all(
                isinstance(a, str) for a in top):
            top = [top]
        if top is not None and (not isinstance(top, list) or len(top) != len(ctx.questions)):
            raise InvalidInputError(
                f'{where}: "answers" must be a list with one list of strings (or null) per question '
                f"({len(ctx.questions)} question(s)), or null")
        for q, (question, prefix) in enumerate(zip(ctx.questions, ctx.answer_prefixes)):
            item = obj["questions"][q]
            if isinstance(item, dict) and "answers" in item:
                given, answers = True, item["answers"]
            else:
                given, answers = top is not None, (top[q] if top is not None else None)
            if isinstance(answers, str):
                answers = [answers]
            if not given or (answers is not None and (
                    not isinstance(answers, list) or not answers
                    or not all(isinstance(a, str) and a.strip() for a in answers))):
                raise InvalidInputError(
                    f'{where}: questions[{q}] needs "answers", a non-empty list of non-empty strings or null '
                    '(no accepted answer), in the question object or a top-level "answers" list')
            out.append(Example(task="user", index=len(out), context=ctx.context, question=question,
                               answers=None if answers is None else tuple(answers), scorer="contains",
                               answer_prefix=prefix, id=f"user-c{c:05d}-q{q:03d}"))
    return out


# -- calibration vs evaluation ---------------------------------------------------------------------------
def _paragraph_hashes(text):
    return {context_hash(p) for p in _paragraphs(text)} | {context_hash(text)}


def check_disjoint(examples, calibration):
    """Refuse evaluation contexts that overlap calibration contexts.

    Two contexts overlap when they are equal or share a paragraph of at least 80 characters
    (after whitespace is collapsed). Needles and word lists are short lines and are not
    compared.

    Parameters
    ----------
    examples : sequence of Example
    calibration : Calibration or str or os.PathLike

    Returns
    -------
    dict
        ``{"calibration_sha256": ..., "calibration_contexts": n, "overlaps": 0}`` for the report.

    Raises
    ------
    InvalidInputError
        Naming the first overlapping example and calibration line, and how many overlap.
    """
    from .calibration import Calibration, read_calibration

    if not isinstance(calibration, Calibration):
        calibration = read_calibration(calibration)
    seen = {}
    for ctx in calibration.contexts:
        for h in _paragraph_hashes(ctx.context):
            seen.setdefault(h, ctx.line)
    bad = []
    for ex in examples:
        lines = {seen[h] for h in _paragraph_hashes(ex.context) if h in seen}
        if lines:
            bad.append((ex.id, min(lines)))
    if bad:
        raise InvalidInputError(
            f"{calibration.path}: {len(bad)} evaluation context(s) overlap the calibration contexts "
            f"(first: {bad[0][0]} shares text with line {bad[0][1]}); evaluate on other contexts")
    return {"calibration_sha256": calibration.sha256, "calibration_contexts": len(calibration.contexts),
            "overlaps": 0}


def calibration_lines(tasks, n, *, seed=0, context_length=1000, length=len, paragraphs=None):
    """JSON lines of a calibration file (for ``budgetopt profile``) built from the
    ``"calibration"`` half of the haystack: ``n`` contexts per task, with their questions.
    They share no paragraph with any ``split="eval"`` example."""
    out = []
    for task in tasks:
        for ex in make_examples(task, n, seed=seed, context_length=context_length, length=length,
                                paragraphs=paragraphs, split="calibration"):
            out.append(json.dumps({"id": ex.id, "context": ex.context, "questions": [ex.question]}))
    return out
