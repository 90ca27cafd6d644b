"""The package version (one place; ``fffc.__version__`` and the records fffc writes)."""

VERSION = "0.1.0"
