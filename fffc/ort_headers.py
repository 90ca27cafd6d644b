"""Moved to fffc.package.ort_headers (an alias while branches in flight are merged)."""
import sys

from .package import ort_headers as _moved

sys.modules[__name__] = _moved
