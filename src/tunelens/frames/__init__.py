"""tunelens outputs as tidy pandas DataFrames: ``tunelens.load(PATH)`` and ``result.to_pandas()``.

Every output folder (and every ``tunelens.api`` result) becomes a :class:`Results`: one DataFrame per
kind of observation, in long form (one row per model × tensor, × layer, × component, per pair of
models, per task × metric...), plus ``meta``, the output's JSON (definitions, inputs, provenance). The
values are the files' own: a frame equals the CSV or JSON it was read from, cell for cell (undefined
values are NaN / <NA>). The report draws its weight-space and activation figures from these frames
with :mod:`tunelens.report.figures`, which a notebook can call too.

Modules by output: :mod:`.weights` (diff, vector, apply, lora), :mod:`.subspace` (subspace, spectrum),
:mod:`.activations`, :mod:`.evaluation` (evaluate, compare); :mod:`.load` recognises folders.
"""

from __future__ import annotations

from tunelens.frames.activations import activations_results
from tunelens.frames.evaluation import evaluate_results
from tunelens.frames.load import load
from tunelens.frames.results import Results
from tunelens.frames.subspace import spectrum_results, subspace_results
from tunelens.frames.tidy import csv_frame
from tunelens.frames.weights import diff_results, layer_components

__all__ = [
    "Results", "load", "diff_results", "subspace_results", "spectrum_results", "activations_results",
    "evaluate_results", "layer_components", "csv_frame",
]  # fmt: skip
