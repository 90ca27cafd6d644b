"""Contracts every stage shares: op specs, the fixed value sets, the mode registry, sites,
options, errors. Nothing here imports another fffc package."""
