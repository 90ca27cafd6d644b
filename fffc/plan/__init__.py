"""Planning: what each site becomes (``decide``), and the calibrated modes' parameters
(``calibration`` statistics, ``predictor`` training, ``allocate`` budget search)."""
