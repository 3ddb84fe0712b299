"""What does the change do? Every evaluated model and edit on each task, with its standard error.

Usage: python examples/evaluation_scores.py STUDY_DIR OUT.png [METRIC]   (METRIC default: acc)
"""

import sys

import matplotlib.pyplot as plt

import tunelens

metric = sys.argv[3] if len(sys.argv) > 3 else "acc"
results = tunelens.load(sys.argv[1]).evaluate.results  # one row per run × variant × task × metric
rows = results[results.metric == metric].assign(
    label=lambda d: d.run.where(d.variant.isin(["as_loaded", "edited"]), d.run + " " + d.variant)
)
print(rows[["label", "task", "value", "n", "stderr"]].to_string(index=False))
value = rows.pivot(index="label", columns="task", values="value").loc[rows.label.unique()]
err = rows.pivot(index="label", columns="task", values="stderr").loc[value.index]
ax = value.plot.barh(xerr=err, figsize=(6.4, 0.35 * len(value) + 1.5), xlabel=metric, title=f"{metric} ± stderr")
plt.tight_layout()
ax.figure.savefig(sys.argv[2])
