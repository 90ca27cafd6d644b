"""Moved to fffc.verify.cuda_emu (an alias while branches in flight are merged)."""
import sys

from ..verify import cuda_emu as _moved

sys.modules[__name__] = _moved
