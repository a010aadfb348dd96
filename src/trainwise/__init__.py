"""trainwise: measure whether to train from scratch, train fully on a large dataset, or fine-tune.

Importing the package is cheap on purpose: torch, Lightning, timm and MLflow load only inside the commands
that need them.
"""

__version__ = "0.1.0"
