"""fffc/contract.h, the shim's view of fffc.contract.ops: the committed copy is the generator's
output, and compiled, it says what fffc.contract.ops says."""

from __future__ import annotations

import subprocess

import pytest

from fffc.contract import ops
from fffc.contract.kinds import WeightDtype
from fffc.package import contract_header
from fffc.package.native import CXXFLAGS

PROGRAM = r"""
#include <cstdio>
#include <fffc/contract.h>

using namespace fffc::contract;

// Each value of a choice enum with the attribute it is read from and the name it stands for.
template <class E>
void PrintChoices(int count) {
  for (int i = 0; i < count; ++i) {
    const E value = static_cast<E>(i);
    std::printf("choice %s %s %d %s\n", fffc::contract::Choices<E>::kOp,
                fffc::contract::Choices<E>::kAttribute.name, i, Name(value));
  }
}

template <class Op>
void Print() {
  std::printf("op %s %d\n", Op::kName, Op::kNumOutputs);
  for (int i = 0; i < Op::kNumInputs; ++i)
    std::printf("input %s %s %d %d\n", Op::kName, Op::kInputNames[i], Op::kOptional[i],
                Op::kWeight[i]);
  const OpContract& c = Op::kContract;
  std::printf("contract %s %d %d\n", c.name, c.num_inputs, c.input_names == Op::kInputNames);
}

int main() {
  std::printf("domain %s %d %u %s\n", kDomain, kOpsetVersion, kOrtApiVersion, kOrtMinRelease);
  Print<SparseFFN>();
  Print<FastFeedForward>();
  Print<StructuredFFN>();
  Print<RoutedFFN>();
  std::printf("index %d %d %d %d\n", SparseFFN::kHC, FastFeedForward::kWOut,
              StructuredFFN::kS2, RoutedFFN::kLB);
  std::printf("attr %s %s %s\n", SparseFFN::kMode.name, SparseFFN::kMode.default_value,
              SparseFFN::kMode.choices[SparseFFN::kMode.num_choices - 1]);
  PrintChoices<SparseFFN::Activation>(4);
  PrintChoices<SparseFFN::UpActivation>(2);
  PrintChoices<SparseFFN::Mode>(4);
  PrintChoices<FastFeedForward::Activation>(1);
  PrintChoices<FastFeedForward::TieBreak>(2);
  PrintChoices<StructuredFFN::Activation>(4);
  PrintChoices<RoutedFFN::Activation>(4);
  PrintChoices<RoutedFFN::Selection>(2);
  PrintChoices<RoutedFFN::KRound>(3);
  PrintChoices<RoutedFFN::Router>(2);
  std::printf("enum %s %s %s %s\n", Name(SparseFFN::Mode::kTeal), Name(RoutedFFN::KRound::kCeil),
              Name(FastFeedForward::TieBreak::kGe), Name(SparseFFN::Activation::kGeluTanh));
  std::printf("dtype %s %s %s\n", Name(WeightDtype::kFloat32), Name(WeightDtype::kBfloat16),
              Name(WeightDtype::kInt8));
  std::printf("attr %s %lld\n", FastFeedForward::kDepth.name,
              static_cast<long long>(FastFeedForward::kDepth.default_value));
  std::printf("attr %s %g %s %g %g\n", RoutedFFN::kEpsilon.name,
              static_cast<double>(RoutedFFN::kEpsilon.default_value), RoutedFFN::kXCoef.name,
              static_cast<double>(RoutedFFN::kXCoef.default_value[0]),
              static_cast<double>(RoutedFFN::kXCoef.default_value[1]));
}
"""


def test_committed_header_is_generated_from_ops() -> None:
    """Fails when fffc/contract/ops.py changed and runtime/include/fffc/contract.h was not regenerated
    (python -m fffc.package.contract_header --write)."""
    committed = contract_header.committed_path()
    assert committed.read_text() == contract_header.header()
    assert committed.read_text().startswith(
        "// Generated from fffc/contract/ops.py by fffc/package/contract_header.py; do not edit.\n")
    assert contract_header.main(["--check"]) == 0


@pytest.fixture(scope="module")
def printed(tmp_path_factory: pytest.TempPathFactory) -> list[list[str]]:
    tmp = tmp_path_factory.mktemp("contract")
    (tmp / "print.cc").write_text(PROGRAM)
    include = contract_header.committed_path().parent.parent
    flags = [f for f in CXXFLAGS if f != "-fvisibility=hidden"]
    subprocess.run(["g++", *flags, "-Werror", f"-I{include}", str(tmp / "print.cc"), "-o",
                    str(tmp / "print")], check=True, capture_output=True, text=True)
    out = subprocess.run([str(tmp / "print")], check=True, capture_output=True, text=True).stdout
    return [line.split() for line in out.splitlines()]


def test_compiled_header_says_what_ops_says(printed: list[list[str]]) -> None:
    assert printed[0] == ["domain", "ai.fffc", "1", "17", "1.17"]
    assert contract_header.ORT_API_VERSION == 17
    for spec in ops.OPS.values():
        assert ["op", spec.name, str(len(spec.outputs))] in printed
        inputs = [row[2:] for row in printed if row[:2] == ["input", spec.name]]
        weights = ops.WEIGHT_INPUTS[spec.name]
        assert inputs == [[a.name, str(int(a.optional)), str(int(a.name in weights))]
                          for a in spec.inputs]
        assert ["contract", spec.name, str(len(spec.inputs)), "1"] in printed
        for a in spec.attributes:
            if a.choices:
                assert [row[3:] for row in printed if row[:3] == ["choice", spec.name, a.name]] \
                    == [[str(i), c] for i, c in enumerate(a.choices)], (spec.name, a.name)
    assert ["index", "11", "3", "10", "10"] in printed
    assert ["attr", "mode", "exact", "predictor"] in printed
    assert ["attr", "depth", "11"] in printed
    assert ["enum", "teal", "ceil", "ge", "gelu_tanh"] in printed
    assert ["dtype", "float32", "bfloat16", "int8"] in printed
    assert [d.value for d in WeightDtype] == ["float32", "float16", "bfloat16", "int4", "int8"]
    assert ["attr", "epsilon", "1e-05", "x_coef", "1", "0"] in printed


def test_weight_input_that_names_no_input_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(contract_header.WEIGHT_INPUTS, "SparseFFN", ("W1", "W9"))
    with pytest.raises(ValueError, match="W9"):
        contract_header.header()



def test_choice_that_is_no_cpp_enumerator_is_an_error() -> None:
    with pytest.raises(ValueError, match="gelu-tanh"):
        contract_header._enumerator("gelu-tanh")
