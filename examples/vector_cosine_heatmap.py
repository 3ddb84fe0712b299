"""Are the domains' tuning vectors orthogonal (paper Fig. 3)? Cosine per pair beside its null baselines.

Usage: python examples/vector_cosine_heatmap.py STUDY_DIR OUT.png
"""

import sys

import tunelens
from tunelens.report import figures

diff = tunelens.load(sys.argv[1]).diff
pairs = diff.vector_cosine.query("scope == 'without_embeddings'")  # one row per pair (a, b) with its baselines
pairs = pairs.assign(z_signflip=pairs.cosine / pairs.signflip_std)  # how many null std devs from 0
print(pairs[["a", "b", "cosine", "random_std", "signflip_std", "z_signflip"]].to_string(index=False))
fig = figures.pair_heatmap(pairs, "cosine", title="cosine between tuning vectors (without embeddings)")
fig.savefig(sys.argv[2])
