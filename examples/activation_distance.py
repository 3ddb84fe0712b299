"""How differently do the models' FFN neurons fire (paper Fig. 2)? Edit distance per layer, with plain pandas.

Usage: python examples/activation_distance.py STUDY_DIR OUT.png
"""

import sys

import tunelens

acts = tunelens.load(sys.argv[1]).activations
print(acts.pair_summary[["pair", "metric", "mean", "tokens"]].to_string(index=False))
table = acts.pairs.pivot(index="layer", columns="pair", values="distance")  # layers × model pairs
ax = table.plot(marker="o", ylabel="Hamming / d_ff", title="FFN activation edit distance per layer")
ax.axhline(0.04, linestyle="--", color="grey", label="paper: mostly < 0.04")
ax.legend(fontsize=8)
ax.figure.savefig(sys.argv[2])
