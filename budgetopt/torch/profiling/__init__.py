"""Profiling a transformers model into the arrays LU-KV tables are made from, one concept a module.

In pipeline order:

* :mod:`.scorers` -- which kvpress scorer a name, a press or a function means
  (:func:`~.scorers.resolve_scorer`, :data:`~.scorers.SCORER_NAMES`);
* :mod:`.capture` -- the press that records a scorer's scores at prefill, in kvpress's hook flow;
* :mod:`.norms` -- value-output norms of every query head (:func:`~.norms.value_output_norms`);
* :mod:`.oracle` -- the attention function patched in while the model answers, which folds each
  generated step's attention row into the oracle;
* :mod:`.context` -- the engine: one context and its questions into a
  :class:`~.context.ContextProfile` (:func:`~.context.profile_context`);
* :mod:`.run` -- a whole calibration file into a run directory (:func:`~.run.profile_model`),
  and :func:`~.run.load_local_model`.

The model's layers and KV heads are read by :mod:`budgetopt.torch.geometry`, shared with the
presses. The public names stay importable from :mod:`budgetopt.torch.profiler` (and lazily
from :mod:`budgetopt.torch`). This package's ``__init__`` imports nothing: kvpress (which patches
transformers' attention functions at import) loads with the first module that needs it.
"""
