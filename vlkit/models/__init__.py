"""Language backbones shared by the families (no torch import here: see :mod:`vlkit.models.backbones`)."""
