"""The stages of ``fffc compile``, one module each, in the order ``fffc.pipeline`` runs them.

Every stage module has ``NAME`` and ``run(previous result, Context) -> result``: it takes
the previous stage's typed result, does its work through the layer packages (frontend,
passes, plan, verify, codegen, package) and, with ``--dump DIR``, writes its numbered dump
(``context.DUMPS`` says what each one is).
"""
