"""Moved to fffc.contract.errors (an alias while branches in flight are merged)."""
import sys

from .contract import errors as _moved

sys.modules[__name__] = _moved
