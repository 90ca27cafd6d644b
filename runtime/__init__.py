"""Runtime shim (imported as fffc.runtime)."""
