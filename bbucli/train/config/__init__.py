"""The training config: schema, loading with overrides, and cross-field checks."""

from bbucli.train.config.loading import *  # noqa: F403
from bbucli.train.config.loading import __all__  # noqa: F401
