"""Moved to fffc.contract.ops (an alias while branches in flight are merged)."""
import sys

from .contract import ops as _moved

sys.modules[__name__] = _moved
