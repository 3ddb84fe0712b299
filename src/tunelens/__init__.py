"""tunelens: what domain fine-tuning does to a large language model.

Only the version lives here, so that ``import tunelens.cli`` stays free of torch.
"""

__version__ = "0.1.0"
