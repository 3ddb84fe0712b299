"""Where did fine-tuning move the weights? Relative change ‖τ‖/‖θ_pre‖ per layer, one line per model.

Usage: python examples/weight_change_per_layer.py STUDY_DIR OUT.png   (STUDY_DIR: `tunelens study` / `demo` output)
"""

import sys

import tunelens
from tunelens.report import figures

study = tunelens.load(sys.argv[1])
layers = study.diff.layers  # one row per model × layer: numel, cosine, one_minus_cosine, relative_change, norms
print(layers.pivot(index="layer", columns="model", values="relative_change").to_string())
print("definition:", study.diff.definitions["relative_change"])
fig = figures.per_layer(layers, "relative_change", title="relative change per layer", ylabel="‖τ‖ / ‖θ_pre‖")
fig.savefig(sys.argv[2])
