"""The shim's C++ view of the ``ai.fffc`` contract, generated from ``fffc.contract.ops``.

``header()`` writes ``fffc/contract.h``: the domain, the opset version, the ONNX Runtime C
API version the shim asks for, and per op its name, its inputs in order (index constants,
names, optional and weight flags), its output count and its attributes (names, defaults,
choices), and per string attribute with choices an ``enum class`` of them in their order (so a
value indexes its name: ``Name(value)``) with ``Choices<E>`` naming the attribute it is read
from; and the weight storages of ``fffc.contract.kinds.WeightDtype`` (the kernel tables'
``weight_dtype``) as ``enum class WeightDtype``. The shim build generates it into its build directory; a copy is committed in
``runtime/include/fffc/`` for C++ builds without Python (``runtime/CMakeLists.txt``), and a
test keeps that copy equal to ``header()``. Regenerate it with
``python -m fffc.package.contract_header --write``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from ..contract.kinds import WeightDtype
from ..contract.ops import CODE_INPUTS, DOMAIN, OPS, OPSET_VERSION, WEIGHT_INPUTS, Attribute, OpSpec

# The ONNX Runtime C API version the shim asks for (and sets as OrtCustomOp::version), the
# oldest it needs: OrtCustomOp::CreateKernelV2/KernelComputeV2 (errors as OrtStatus) came with
# 16, KernelContext_ParallelFor (kernels on ORT's intra-op pool) with 17. ONNX Runtime 1.N
# serves C API versions up to N, so the shim loads in ONNX Runtime 1.17 and newer.
ORT_API_VERSION = 17

HEADER = "fffc/contract.h"  # where it is included from (an include directory's subpath)
_GUARD = "FFFC_CONTRACT_H_"


def _ident(name: str) -> str:
    """``W_in`` → ``WIn``, ``k_round`` → ``KRound``, ``TH`` → ``TH``."""
    return "".join(p[:1].upper() + p[1:] for p in name.split("_"))


def _cstr(s: str) -> str:
    if not re.fullmatch(r"[\w .,:;()\[\]+\-/·=<>|]*", s):
        raise ValueError(f"not a plain C string: {s!r}")
    return '"' + s + '"'


def _float(v: float) -> str:
    text = repr(float(v))
    return text + "f" if any(c in text for c in ".e") else text + ".f"


def _bools(flags: list[bool]) -> list[str]:
    return ["true" if f else "false" for f in flags]


def _member(decl: str, items: list[str], indent: str = "  ") -> list[str]:
    """``  <decl> {a, b, ...};`` (a member; ``indent=""``: at namespace scope), wrapped at 100
    columns."""
    head = f"{indent}{decl} {{"
    lines, line = [], head
    for i, item in enumerate(items):
        piece = item + (", " if i + 1 < len(items) else "};")
        if len(line) + len(piece.rstrip()) > 100 and line != head:
            lines.append(line.rstrip())
            line = " " * 6
        line += piece
    return [*lines, line]


def _enumerator(choice: str) -> str:
    """``gelu_tanh`` → ``kGeluTanh``."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", choice):
        raise ValueError(f"choice {choice!r} has no C++ enumerator")
    return f"k{_ident(choice)}"


def _enum(a: Attribute) -> list[str]:
    """``enum class <Attribute> : int { k<Choice>, ... };`` in the choices' order."""
    names = [_enumerator(c) for c in a.choices]
    if len(set(names)) != len(names):
        raise ValueError(f"attribute {a.name}: choices clash as C++ enumerators: {names}")
    return _member(f"enum class {_ident(a.name)} : int", names)


def _attribute(a: Attribute) -> list[str]:
    k = f"k{_ident(a.name)}"
    if a.type == "string":
        choices = [*_enum(a), *_member(f"static constexpr const char* const {k}Choices[] =",
                                       [_cstr(c) for c in a.choices])] if a.choices else []
        return [*choices, *_member(f"static constexpr StringAttribute {k} =", [
            _cstr(a.name), _cstr(str(a.default)), f"{k}Choices" if a.choices else "nullptr",
            str(len(a.choices))])]
    if a.type == "int":
        return _member(f"static constexpr IntAttribute {k} =", [_cstr(a.name), str(int(a.default))])
    if a.type == "float":
        return _member(f"static constexpr FloatAttribute {k} =",
                       [_cstr(a.name), _float(float(a.default))])
    if a.type == "floats":
        values = [_float(float(v)) for v in str(a.default).split(",")]
        return [*_member(f"static constexpr float {k}Default[] =", values),
                *_member(f"static constexpr FloatsAttribute {k} =",
                         [_cstr(a.name), f"{k}Default", str(len(values))])]
    raise ValueError(f"attribute {a.name}: type {a.type!r} has no C++ form")


def _choice_attributes(spec: OpSpec) -> list[Attribute]:
    return [a for a in spec.attributes if a.type == "string" and a.choices]


def _choices(spec: OpSpec) -> list[str]:
    """``Choices<E>`` of each of the op's choice enums: the op and the attribute it is read from."""
    return [line for a in _choice_attributes(spec) for line in [
        f"template <> struct Choices<{spec.name}::{_ident(a.name)}> {{",
        f"  static constexpr const char* kOp = {spec.name}::kName;",
        f"  static constexpr const StringAttribute& kAttribute = {spec.name}::k{_ident(a.name)};",
        "};"]]


def _op(spec: OpSpec) -> list[str]:
    names = [a.name for a in spec.inputs]
    weights = WEIGHT_INPUTS.get(spec.name, ())
    codes = CODE_INPUTS.get(spec.name, ())
    unknown = (set(weights) | set(codes)) - set(names)
    if unknown:
        raise ValueError(f"WEIGHT_INPUTS/CODE_INPUTS[{spec.name!r}] name no input "
                         f"{sorted(unknown)}")
    idents = ([f"k{_ident(n)}" for n in names] + [f"k{_ident(a.name)}" for a in spec.attributes]
              + [_ident(a.name) for a in _choice_attributes(spec)])
    taken = {"kName", "kNumInputs", "kNumOutputs", "kInputNames", "kOptional", "kWeight",
             "kCodes", "kContract", "Input"}
    clash = {i for i in idents if idents.count(i) > 1 or i in taken}
    if clash:
        raise ValueError(f"{spec.name}: C++ names clash: {sorted(clash)}")
    n = len(names)
    return [
        f"// {spec.domain}::{spec.name}, version {spec.version}.",
        f"struct {spec.name} {{",
        f"  static constexpr const char kName[] = {_cstr(spec.name)};",
        f"  enum Input : int {{ {', '.join(f'k{_ident(x)}' for x in names)} }};",
        f"  static constexpr int kNumInputs = {n};",
        f"  static constexpr int kNumOutputs = {len(spec.outputs)};",
        *_member("static constexpr const char* const kInputNames[kNumInputs] =",
                 [_cstr(x) for x in names]),
        *_member("static constexpr bool kOptional[kNumInputs] =",
                 _bools([a.optional for a in spec.inputs])),
        *_member("static constexpr bool kWeight[kNumInputs] =", _bools([x in weights for x in names])),
        *_member("static constexpr bool kCodes[kNumInputs] =", _bools([x in codes for x in names])),
        *_member("static constexpr OpContract kContract =",
                 ["kName", "kNumInputs", "kInputNames", "kOptional", "kWeight", "kCodes",
                  "kNumOutputs"]),
        *[line for a in spec.attributes for line in _attribute(a)],
        "};",
        *_choices(spec),
        "",
    ]


def header() -> str:
    """The text of ``fffc/contract.h`` for the ops in ``fffc.contract.ops``."""
    lines = [
        "// Generated from fffc/contract/ops.py by fffc/package/contract_header.py; do not edit.",
        "// The ai.fffc operators as the shim sees them: per op its inputs in order (index",
        "// constants, names, optional and weight flags) and its attributes (names, defaults,",
        "// choices, an enum class of each attribute's choices); weights are the inputs that",
        "// may be stored as float16 or bfloat16, codes those that may hold uint8 (integer",
        "// weight codes, zero points).",
        f"#ifndef {_GUARD}",
        f"#define {_GUARD}",
        "",
        "#include <cstdint>",
        "",
        "namespace fffc::contract {",
        "",
        f"inline constexpr const char kDomain[] = {_cstr(DOMAIN)};",
        f"inline constexpr int kOpsetVersion = {OPSET_VERSION};",
        "// The ONNX Runtime C API version the shim asks for (ONNX Runtime 1.N serves up to N).",
        f"inline constexpr uint32_t kOrtApiVersion = {ORT_API_VERSION};",
        f"inline constexpr const char kOrtMinRelease[] = \"1.{ORT_API_VERSION}\";",
        "",
        "// What code that handles every op alike reads of one op.",
        "struct OpContract {",
        "  const char* name;",
        "  int num_inputs;",
        "  const char* const* input_names;",
        "  const bool* optional;",
        "  const bool* weight;",
        "  const bool* codes;",
        "  int num_outputs;",
        "};",
        "",
        "// An attribute with the value an absent one has; choices (when not null) are all it",
        "// may take.",
        "struct StringAttribute {",
        "  const char* name;",
        "  const char* default_value;",
        "  const char* const* choices;",
        "  int num_choices;",
        "};",
        "struct IntAttribute {",
        "  const char* name;",
        "  int64_t default_value;",
        "};",
        "struct FloatAttribute {",
        "  const char* name;",
        "  float default_value;",
        "};",
        "struct FloatsAttribute {",
        "  const char* name;",
        "  const float* default_value;",
        "  int count;",
        "};",
        "",
        "// The op and the attribute that choice enum E (e.g. SparseFFN::Mode) is read from; E's",
        "// values are its choices in order.",
        "template <class E>",
        "struct Choices;",
        "",
        "// The choice an enum value stands for (its kernel-table key and its name in messages).",
        "template <class E>",
        "constexpr const char* Name(E value) {",
        "  return Choices<E>::kAttribute.choices[static_cast<int>(value)];",
        "}",
        "",
        "// How an op's weight matrices are stored (fffc.contract.kinds.WeightDtype: float values,",
        "// or integer codes of SparseFFN's bits); Name gives the kernel tables' weight_dtype.",
        *_member("enum class WeightDtype : int", [_enumerator(d.value) for d in WeightDtype], ""),
        *_member("inline constexpr const char* const kWeightDtypeNames[] =",
                 [_cstr(d.value) for d in WeightDtype], ""),
        "constexpr const char* Name(WeightDtype value) {",
        "  return kWeightDtypeNames[static_cast<int>(value)];",
        "}",
        "",
    ]
    for spec in OPS.values():
        lines += _op(spec)
    lines += ["}  // namespace fffc::contract", "", f"#endif  // {_GUARD}", ""]
    return "\n".join(lines)


def write(include_dir: Path) -> Path:
    """Writes ``header()`` to ``include_dir/fffc/contract.h`` (atomically) and returns it."""
    path = include_dir / HEADER
    text = header()
    if path.exists() and path.read_text() == text:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # concurrent builds
    tmp.write_text(text)
    tmp.replace(path)
    return path


def committed_path() -> Path:
    """The copy committed for builds without Python: runtime/include/fffc/contract.h."""
    import importlib.resources

    return Path(str(importlib.resources.files("fffc.runtime"))) / "include" / HEADER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fffc.package.contract_header",
                                     description="print fffc/contract.h, or update its committed "
                                                 "copy (--write) or compare with it (--check)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true")
    group.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    path = committed_path()
    if args.write:
        path.write_text(header())
    elif args.check:
        if not path.exists() or path.read_text() != header():
            print(f"{path} differs from fffc/contract/ops.py: run python -m fffc.package.contract_header --write",
                  file=sys.stderr)
            return 1
    else:
        sys.stdout.write(header())
    return 0


if __name__ == "__main__":
    sys.exit(main())
