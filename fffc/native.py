"""Moved to fffc.package.native (an alias while branches in flight are merged)."""
import sys

from .package import native as _moved

sys.modules[__name__] = _moved
