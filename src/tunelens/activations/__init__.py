"""FFN activation analysis: fraction of active MLP neurons per layer and pattern distances between models.

Stages: :mod:`corpus` (files → token ids once), :mod:`loading` (models and one shared tokenizer),
:mod:`hooks` (forward hooks on each layer's activation module), :mod:`collect` (one model's pass,
exact counts), :mod:`store` / :mod:`compare` (bit-packed patterns on disk, exact distances),
:mod:`run` (the recipe). DESIGN.md §1 defines the numbers; :func:`options.definitions` states them
in every output.
"""
