"""Moved to fffc.contract.targets (an alias while branches in flight are merged)."""
import sys

from .contract import targets as _moved

sys.modules[__name__] = _moved
