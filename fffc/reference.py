"""Moved to fffc.verify.reference (an alias while branches in flight are merged)."""
import sys

from .verify import reference as _moved

sys.modules[__name__] = _moved
