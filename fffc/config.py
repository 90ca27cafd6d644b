"""Moved to fffc.contract.config (an alias while branches in flight are merged)."""
import sys

from .contract import config as _moved

sys.modules[__name__] = _moved
