"""Greedy decoding of a LLaMA-shaped LLM in ONNX Runtime GenAI: the builder's model vs fffc's.

    python bench/bench_llm_decode.py [--layers 16] [--variants drelu,relu] [--teal] [--runs 3]
        [--predictor [--predictor-rank 128]] [--precision fp32|int4]
    python bench/bench_llm_decode.py --quick     # a tiny model and a few tokens (smoke test)

The model: ``transformers.LlamaForCausalLM`` with random weights (default hidden 2048, FFN
5632, 16 layers, 32 heads / 8 KV heads, vocabulary 32000), saved with ``save_pretrained``
next to a BPE tokenizer trained on local text, and built by ONNX Runtime GenAI's model
builder (``python -m onnxruntime_genai.models.builder -p fp32 -e cpu``). Variants:

- ``relu``: ``hidden_act="relu"``; the builder's MLP is ``Relu(x·Wg) ⊙ (x·Wu)`` (ReGLU).
- ``drelu``: the same kind of checkpoint; a ``Relu`` is then inserted after each MLP's
  ``up_proj/MatMul`` in the built graph, giving TurboSparse's ``Relu(x·Wg) ⊙ Relu(x·Wu)``
  (``LlamaConfig`` has no such activation and the builder no such MLP). While its weights
  are set, the checkpoint's MLPs compute the same function.
- ``swiglu`` (``--teal``): ``hidden_act="silu"``, calibrated by ``fffc calibrate MODEL_DIR
  --prompts FILE`` (FFN inputs of greedy decode steps: ``--teal-prompts`` prompts,
  ``--teal-generate`` tokens each) and compiled with ``--calibration --budget uniform=S``
  for each ``--teal-levels`` S.
- predictor rows (``--predictor``): the ``relu`` and ``drelu`` checkpoints again, their
  neurons selected by a trained low-rank predictor (Deja Vu / PowerInfer style: scores
  (x·A)·B + c, A [hidden, R], B [R, FFN]; the neurons past a cut are computed, the other
  gate, up and down rows are not read). ``fffc calibrate MODEL_DIR --prompts FILE
  --predictor-rank R --predictor-sparsity SPARSITY --center none`` trains one per FFN on the
  FFN inputs of the same decode steps as TEAL's (``--teal-prompts``, ``--teal-generate``;
  labels: the neurons outside the ``--sparsity`` quantile of |a|, initialized from the
  gate's truncated SVD), sets its cut on the held-out fifth of those rows to keep 99% of
  the active neurons, and ``fffc compile --calibration CALIB --budget predictor`` runs every
  site's predictor at that cut. The row shows the rank, that held-out recall (the cut's
  target, so about 0.99 by construction; the mean and the smallest over the sites) and the
  fraction of neurons the predictors then select (the mean); "same tokens" is the check
  that the approximation keeps greedy decoding of the timed prompt where it was (fp32).

Weights: the initializer's N(0, 0.02), except the token embeddings, scaled to N(0, 1) so
that greedy decoding of the random model wanders over the vocabulary instead of repeating
one token (``EMBED_SCALE``). Gate sparsity of ``relu``/``drelu`` (LLaMA has no biases):
every token embedding carries a constant in coordinate 0 that no layer writes (row 0 of
``o_proj`` and ``down_proj`` is zero) and only the gates read (column 0 of ``q/k/v_proj``,
``up_proj`` and ``lm_head`` is zero), so coordinate 0 of every FFN input is positive and
column 0 of ``W_gate`` acts as a per-neuron bias. One forward pass over 8 calibration
sequences (a text prompt, then ``--generate`` random token ids) sets, layer after layer
(each layer sees the layers before it already set), column 0 of each gate neuron to minus
the ``--sparsity`` quantile, over the positions past the prompt, of the rest of its
pre-activation divided by that coordinate. The fraction printed is measured afterwards on
the GenAI model's own decode steps of the timed prompt (each layer's ``gate_proj/MatMul``
output added as an extra model output and read from ``og.Generator``), over all layers and
neurons.

The compiled model comes from ``assemble``: ``fffc compile GENAI/model.onnx --target x86``,
and a copy of the GenAI folder holding the artifact's model and ``libfffc_ops.so``, whose
``genai_config.json`` names the library in the decoder's ``session_options``. What the
compile made of each site is read from the artifact's ``manifest.json`` and printed (the
decision, whether a kernel serves a one-token call, the reason and quantized weights of
the others; the "fffc's sites at a decode step" column: how many sites run the row's mode
at a decode step). A row none of whose sites runs its mode's kernel at a decode step is
not timed: the table says so. (With ``--precision int4`` the builder's MatMulNBits ask for
accuracy_level 4, whose sites this fffc leaves out of the masked modes: the predictor rows
then show 0 predictor sites, the sites keeping exact mode.) ``--quick`` compiles with
``--max-sparse-tokens 0`` (the kernels at every token count: at the tiny shape the
measured crossover is decided by noise, and the smoke test checks the lowering) and runs
dReLU exact and predictor (rank 16) at fp32 and int4 alike.

Timed: ``og.Generator``, a prompt of ``--prompt`` token ids (the tokenizer's encoding of
generated text), ``--generate`` new tokens, greedy, fp32, 2 intra-op threads (the shim
runs in ONNX Runtime's pool). ``append_tokens`` runs the prefill, so the time to the first
token is ``append_tokens`` plus the first ``generate_next_token``; each later
``generate_next_token`` is one decode step, and decode tokens/s is their count over their
time. ``--runs`` runs per model, stock and fffc interleaved (which one goes first
alternates), both models loaded for the whole time. The time per decode token split into
the FFN and the rest comes from ONNX Runtime's profiler, switched on through GenAI's
``session_options.enable_profiling`` in a separate generation: each top-level node's median
over the decode steps, summed over the MLPs' nodes (``/model/layers.N/mlp/…``; fffc's
``fffc_ffn_N…`` nodes, the dispatching ``If`` that runs the kernel included) and over the
others. On a shared machine a node with two threads waits whenever either one waits for a
core: while the machine is busy, the medians of the dense MatMuls grow most (3x their
fast steps in one run here), and the split and every time above vary from run to run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import enum
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fffc.contract.kinds import Decision

MODEL = "model.onnx"
SEED = 0
# Token embeddings ~ N(0, 1) instead of the initializer's N(0, 0.02): the current token then
# decides the next one, and greedy decoding of the random model wanders over the vocabulary;
# with small embeddings the slowly changing attention average decides it, the model repeats
# one token, and every decode step activates nearly the same neurons.
EMBED_SCALE = 50.0
RECIPE = 2  # part of the cache key: changes with the checkpoint's weights
CALIB_SEQUENCES = 8  # of prompt + generate tokens: the gates' quantiles see 8 x generate rows
WORDS = [
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at",
    "from", "his", "her", "it", "an", "be", "are", "this", "which", "or", "had", "not", "but",
    "were", "they", "one", "all", "their", "has", "been", "have", "who", "when", "more",
    "there", "other", "into", "after", "first", "also", "new", "time", "two", "year", "can",
    "only", "over", "state", "made", "city", "may", "most", "some", "these", "would",
    "people", "under", "world", "river", "north", "south", "between", "during", "such",
    "water", "house", "school", "high", "three", "through", "while", "part", "where",
    "because", "before", "light",
]


@dataclasses.dataclass(frozen=True)
class Shape:
    hidden: int = 2048
    ffn: int = 5632
    layers: int = 16
    heads: int = 32
    kv_heads: int = 8
    vocab: int = 32000

    def ffn_byte_share(self) -> float:
        """The FFNs' part of the weight bytes a decode step reads (the embedding table is
        gathered, not read)."""
        head = self.hidden // self.heads
        attn = self.hidden * (self.hidden + 2 * self.kv_heads * head) + self.hidden ** 2
        ffn = 3 * self.hidden * self.ffn
        total = self.layers * (attn + ffn) + self.vocab * self.hidden
        return self.layers * ffn / total

    def key(self) -> str:
        return (f"r{RECIPE}-h{self.hidden}-f{self.ffn}-l{self.layers}-a{self.heads}"
                f"-kv{self.kv_heads}-v{self.vocab}")


QUICK = Shape(hidden=128, ffn=384, layers=2, heads=4, kv_heads=2, vocab=1000)


class Variant(enum.Enum):
    DRELU = "drelu"
    RELU = "relu"
    SWIGLU = "swiglu"

    @property
    def hidden_act(self) -> str:
        return "silu" if self is Variant.SWIGLU else "relu"

    @property
    def up_relu(self) -> bool:
        return self is Variant.DRELU

    @property
    def shaped(self) -> bool:
        """Gates set to the requested sparsity (the ReLU-gated variants)."""
        return self is not Variant.SWIGLU


@dataclasses.dataclass(frozen=True)
class Row:
    """One compiled model to time against the stock one."""

    variant: Variant
    label: str
    mode: Decision  # what the compile is asked to make of the sites (the manifest's decision)
    compile_args: tuple[str, ...]
    decode_goal: float | None  # tokens/s ratio the issue asks for, None where it sets none
    predictor_rank: int = 0  # mode predictor: the rank calibration trains

    @property
    def calibrated(self) -> bool:
        """Compiled with ``--calibration`` (the masked modes)."""
        return self.mode in (Decision.TEAL, Decision.PREDICTOR)

    def tag(self, args) -> str:
        """The compiled folder's name in the cache: what its compile depends on besides the
        GenAI folder (and the sparsity, in the folder above)."""
        values = "".join(a.replace("=", "").replace(".", "") for a in self.compile_args
                         if not a.startswith("--"))
        rank = f"-r{self.predictor_rank}" if self.predictor_rank else ""
        calib = f"-p{args.teal_prompts}-g{args.teal_generate}" if self.calibrated else ""
        return ("fffc" + values + rank + calib
                + ("" if args.precision == "fp32" else f"-{args.precision}"))


# ---------------------------------------------------------------------------- the models


def _text(n_sentences: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(6, 16))) + "." for _ in range(n_sentences)]


def _tokenizer(vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(vocab, 1000),
                                  special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_text(400, SEED), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def _drelu_forward(mlp):
    import torch

    def forward(x):
        return mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * torch.relu(mlp.up_proj(x)))
    return forward


def _gate_bias_hook(sparsity: float, skip: int):
    """Sets column 0 of the gate so each neuron's gate is ≤ 0 on ``sparsity`` of the rows it
    sees past position ``skip`` (coordinate 0 of its input is positive: the constant
    channel)."""
    import torch

    def hook(mlp, args):
        x = args[0][:, skip:].reshape(-1, args[0].shape[-1])
        w = mlp.gate_proj.weight  # [ffn, hidden]
        rest = (x[:, 1:] @ w[:, 1:].T) / x[:, :1]
        w[:, 0] = -torch.quantile(rest, sparsity, dim=0)
    return hook


def _constant_channel(model) -> None:
    """Coordinate 0 of the residual stream: a constant in every embedding, written by no
    layer, read only by the gates (and the norms' RMS)."""
    inner = model.model
    emb = inner.embed_tokens.weight
    emb[:, 0] = emb[:, 1:].norm(dim=1).mean()  # as large as the rest of a row
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.up_proj):
            proj.weight[:, 0] = 0
        attn.o_proj.weight[0, :] = 0
        mlp.down_proj.weight[0, :] = 0
    model.lm_head.weight[:, 0] = 0


def _calibration_ids(tokenizer, shape: Shape, prompt: int, generate: int) -> np.ndarray:
    """``CALIB_SEQUENCES`` rows: a text prompt (other text than the timed one), then random
    token ids standing for the generated ones."""
    rng = np.random.default_rng(SEED + 1)
    rows = [np.concatenate([_text_ids(tokenizer, prompt, SEED + 10 + 100 * i),
                            rng.integers(3, shape.vocab, size=generate)])
            for i in range(CALIB_SEQUENCES)]
    return np.stack(rows).astype(np.int64)


def checkpoint(shape: Shape, variant: Variant, sparsity: float, prompt: int, generate: int,
               out: Path) -> None:
    """A random-weight LLaMA checkpoint and its tokenizer, saved into ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    cfg = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden,
                      intermediate_size=shape.ffn, num_hidden_layers=shape.layers,
                      num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                      hidden_act=variant.hidden_act, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    tokenizer = _tokenizer(shape.vocab)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(EMBED_SCALE)
    if variant.shaped:
        with torch.no_grad():
            _constant_channel(model)
            hooks = []
            for layer in model.model.layers:
                if variant.up_relu:
                    layer.mlp.forward = _drelu_forward(layer.mlp)
                hooks.append(layer.mlp.register_forward_pre_hook(
                    _gate_bias_hook(sparsity, skip=prompt)))
            ids = _calibration_ids(tokenizer.backend_tokenizer, shape, prompt, generate)
            model(input_ids=torch.from_numpy(ids))
            for h in hooks:
                h.remove()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    gc.collect()


def insert_up_relu(model_path: Path) -> int:
    """Inserts ``Relu`` after every ``…/mlp/up_proj/MatMul`` of a builder graph (in place,
    external data untouched); returns how many."""
    import onnx
    from onnx import helper

    m = onnx.load(str(model_path), load_external_data=False)
    nodes, renamed, added = [], {}, []
    for node in m.graph.node:
        nodes.append(node)
        # MatMul (fp32) or MatMulNBits (int4: ``…/up_proj/MatMul_Q4``)
        if not node.name.rsplit("_Q", 1)[0].endswith("/mlp/up_proj/MatMul"):
            continue
        src = node.output[0]
        dst = node.name.rsplit("/up_proj/", 1)[0] + "/up_act/Relu"
        added.append(helper.make_node("Relu", [src], [dst + "/output_0"], name=dst))
        nodes.append(added[-1])
        renamed[src] = dst + "/output_0"
    for node in nodes:  # the up projection's readers read the Relu
        if all(node is not a for a in added):
            node.input[:] = [renamed.get(i, i) for i in node.input]
    count = len(renamed)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.save(m, str(model_path))
    return count


def genai_folder(hf: Path, variant: Variant, out: Path, precision: str = "fp32") -> None:
    """The GenAI model builder's CPU folder of checkpoint ``hf`` (``-p precision``: fp32, or
    int4: MatMulNBits, block 32, accuracy_level 4)."""
    cache = out.with_name(out.name + ".cache")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf),
           "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(cache)]
    _run(cmd, "the GenAI model builder")
    shutil.rmtree(cache, ignore_errors=True)
    if variant.up_relu:
        n = insert_up_relu(out / MODEL)
        if n == 0:
            raise SystemExit("bench: no mlp/up_proj projection in the builder's graph")


def _run(cmd: Sequence[str], what: str, env: dict | None = None) -> str:
    """Runs a build step at a lower priority (the machine may be shared; the timed
    generations keep this process's priority)."""
    done = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          preexec_fn=lambda: os.nice(10))
    if done.returncode:
        tail = (done.stdout + done.stderr)[-6000:]
        raise BuildError(f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}")
    return done.stdout


class BuildError(RuntimeError):
    pass


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


def _cached(path: Path, build: Callable[[Path], None]) -> Path:
    """``path``, built by ``build(partial)`` and renamed when missing."""
    if path.exists():
        return path
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    partial.rename(path)
    return path


def _fffc() -> str:
    near = Path(sys.executable).with_name("fffc")
    return str(near) if near.exists() else (shutil.which("fffc") or "fffc")


def assemble(genai: Path, out: Path, compile_args: Sequence[str]) -> None:
    """The compiled GenAI folder ``out``, written by ``fffc compile MODEL_DIR`` (the rewritten
    model, its external data and the shim in the folder, the shim named in the decoder's
    session options)."""
    _run([_fffc(), "compile", str(genai), "--target", "x86", "-o", str(out), "--force",
          *compile_args], "fffc compile", dict(os.environ, FFFC_DEBUG="1"))


def teal_available() -> bool:
    done = subprocess.run([_fffc(), "calibrate", "--help"], capture_output=True, text=True)
    return "--prompts" in done.stdout


def calibrate(genai: Path, prompts: Path, generate: int, out: Path,
              extra: Sequence[str] = ()) -> None:
    """TEAL statistics of the FFN inputs at the decode steps of greedy generations after
    each prompt of ``prompts`` (``extra``: more ``fffc calibrate`` options)."""
    _run([_fffc(), "calibrate", str(genai), "--prompts", str(prompts), "--generate",
          str(generate), "-o", str(out), "--force", *extra], "fffc calibrate",
         dict(os.environ, FFFC_DEBUG="1"))


def calibration(genai: Path, base: Path, args, row: Row) -> Path:
    """CALIB.json of ``genai`` for ``row`` (built once, kept in ``base``): ``fffc calibrate
    --prompts`` on ``--teal-prompts`` texts other than the timed prompt's, ``--teal-generate``
    greedy tokens each; predictor rows also train rank-R predictors whose labels are the
    neurons outside the ``--sparsity`` quantile of |a|. Thresholds of |v| (``--center
    none``) where fffc compile takes no centered ones: int4 sites, and predictor mode, which
    reads no thresholds (it also skips calibrate's second pass)."""
    prompts = base / "prompts.txt"
    prompts.write_text("\n".join(" ".join(_text(8, SEED + 100 + i))
                                 for i in range(args.teal_prompts)))
    extra: list[str] = []
    name = f"calib-p{args.teal_prompts}-g{args.teal_generate}"
    if row.mode is Decision.PREDICTOR:
        extra += ["--predictor-rank", str(row.predictor_rank),
                  "--predictor-sparsity", str(args.sparsity)]
        name += f"-r{row.predictor_rank}-s{args.sparsity}"
    if row.mode is Decision.PREDICTOR or args.precision != "fp32":
        extra += ["--center", "none"]
    if args.precision != "fp32":
        name += f"-{args.precision}"
    out = base / f"{name}.json"
    if not out.exists():
        t = time.perf_counter()
        calibrate(genai, prompts, args.teal_generate, out, extra)
        print(f"[{row.label}] calibrated: {time.perf_counter() - t:.0f}s", flush=True)
    return out


def predictor_quality(calib: Path) -> str:
    """The trained predictors' held-out quality in CALIB.json, over the sites: recall of the
    active neurons (mean, min) and the fraction of neurons selected (mean)."""
    sites = json.loads(calib.read_text())["sites"].values()
    held = [st["predictor"]["held_out"] for st in sites if st.get("predictor")]
    if not held:
        return "no predictor in the calibration"
    rank = next(st["predictor"]["rank"] for st in sites if st.get("predictor"))
    recall = [h["recall"] for h in held]
    return (f"rank {rank}, held-out recall {statistics.mean(recall):.3f} (min {min(recall):.3f}), "
            f"selects {statistics.mean(h['selected'] for h in held):.0%} of neurons")


@dataclasses.dataclass(frozen=True)
class SiteOutcome:
    """One site of an artifact's manifest.json."""

    decision: str
    decode_kernel: bool  # a kernel serves a one-token call (a decode step)
    reason: str
    weights: str  # its quantized weights' formats ("" for float weights)


@dataclasses.dataclass(frozen=True)
class Lowering:
    """What an ``fffc compile`` made of the sites, from its manifest.json."""

    sites: tuple[SiteOutcome, ...]
    near_misses: int  # FFN-like regions no rule matched
    predictors: int | None  # predictors the compile applied (None: not calibrated)

    @classmethod
    def read(cls, artifact: Path) -> Lowering:
        m = json.loads((artifact / "manifest.json").read_text())
        sites = []
        for site in m["sites"]:
            branches = (site.get("dispatch") or {}).get("branches", [])
            kernel = site["decision"] != Decision.DENSE and any(
                b["branch"] == "kernel" and b["min_tokens"] <= 1 for b in branches)
            weights = " / ".join(dict.fromkeys(
                w["describe"] for w in (site.get("weight_formats") or {}).values()))
            sites.append(SiteOutcome(site["decision"], kernel, site["reason"], weights))
        calib = m.get("calibration")
        return cls(tuple(sites), len(m["near_misses"]),
                   None if calib is None else len(calib.get("predictors") or {}))

    def lowered(self, mode: Decision) -> int:
        """Sites whose ``mode`` kernel serves a decode step."""
        return sum(s.decode_kernel and s.decision == mode for s in self.sites)

    def _count(self, key: Callable[[SiteOutcome], str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sites:
            out[key(s)] = out.get(key(s), 0) + 1
        return out

    @staticmethod
    def _decided(s: SiteOutcome) -> str:
        return s.decision if s.decode_kernel or s.decision == Decision.DENSE else (
            f"{s.decision} (no kernel at one token)")

    def short(self, mode: Decision) -> str:
        """e.g. "16/16 predictor"; the other sites' decisions after it."""
        rest = self._count(self._decided)
        rest.pop(mode.value, None)
        return (f"{self.lowered(mode)}/{len(self.sites)} {mode.value}"
                + "".join(f", {n} {d}" for d, n in rest.items()))

    def describe(self, mode: Decision) -> str:
        """Every site's outcome at a decode step (one token); the reasons and weights of
        those not running a ``mode`` kernel."""
        if not self.sites:
            return f"no FFN site matched ({self.near_misses} FFN-like region(s) no rule matched)"
        parts = [f"{self.lowered(mode)} {mode.value} (kernel at one token)"]
        parts += [f"{n} {key}" for key, n in self._count(
            lambda s: f"{self._decided(s)}: {s.reason}"
                      + (f" [{s.weights}]" if s.weights else "")).items()
            if not key.startswith(f"{mode.value}:")]
        if self.predictors is not None and mode is Decision.PREDICTOR:
            parts.append(f"predictors applied: {self.predictors}")
        return f"{len(self.sites)} site(s): " + "; ".join(parts)


# ---------------------------------------------------------------------------- measuring


def _model(folder: Path, threads: int, **session_options):
    import onnxruntime_genai as og

    cfg = og.Config(str(folder))
    so = {"intra_op_num_threads": threads, **session_options}
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": so}}}))
    return og.Model(cfg)


def _model_file(folder: Path, name: str, threads: int):
    import onnxruntime_genai as og

    cfg = og.Config(str(folder))
    cfg.overlay(json.dumps({"model": {"decoder": {
        "filename": name, "session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(cfg)


@dataclasses.dataclass
class Generation:
    ttft: float  # seconds from append_tokens to the first new token
    decode: float  # seconds per decode step
    tokens: list[int]


def generate(model, prompt: np.ndarray, n: int,
             step: Callable[[object], None] | None = None) -> Generation:
    """Greedy generation of ``n`` tokens; ``step(generator)`` after each decode step."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    total = len(prompt) + n
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(prompt)
    gen.generate_next_token()
    t1 = time.perf_counter()
    tokens = [int(gen.get_next_tokens()[0])]
    decode_s = 0.0
    while not gen.is_done() and len(tokens) < n:
        t = time.perf_counter()
        gen.generate_next_token()
        decode_s += time.perf_counter() - t
        tokens.append(int(gen.get_next_tokens()[0]))
        if step:
            step(gen)
    return Generation(t1 - t0, decode_s / max(len(tokens) - 1, 1), tokens)


def gate_fraction(genai: Path, prompt: np.ndarray, n: int, threads: int) -> float:
    """Fraction of gate pre-activations ≤ 0 over the decode steps of a greedy generation
    (every layer, every neuron)."""
    import onnx

    m = onnx.load(str(genai / MODEL), load_external_data=False)
    outs = [n_.output[0] for n_ in m.graph.node
            if n_.name.rsplit("_Q", 1)[0].endswith("/mlp/gate_proj/MatMul")]
    for name in outs:
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                 None))
    probe = genai / "model.gates.onnx"
    onnx.save(m, str(probe))
    del m
    le, total = 0, 0

    def step(gen) -> None:
        nonlocal le, total
        for name in outs:
            g = gen.get_output(name)
            le += int((g <= 0).sum())
            total += g.size

    try:
        model = _model_file(genai, probe.name, threads)
        generate(model, prompt, n, step)
        del model
    finally:
        probe.unlink()
    gc.collect()
    return le / max(total, 1)


@dataclasses.dataclass
class Split:
    """Milliseconds per decode step: sums of top-level nodes' median times."""

    ffn_ms: float
    rest_ms: float

    @property
    def total_ms(self) -> float:
        return self.ffn_ms + self.rest_ms


def _is_ffn(node_name: str) -> bool:
    return "/mlp/" in node_name or node_name.startswith("fffc_ffn_")


def profile(folder: Path, prompt: np.ndarray, n: int, threads: int, prefix: Path) -> Split:
    """The FFN's and the rest's time per decode step in ONNX Runtime's profile of a greedy
    generation: each top-level node's median over the decode steps."""
    import onnx

    for old in prefix.parent.glob(prefix.name + "*.json"):
        old.unlink()
    model = _model(folder, threads, enable_profiling=str(prefix))
    generate(model, prompt, n)
    del model
    gc.collect()  # the profile is written when the session closes
    files = sorted(prefix.parent.glob(prefix.name + "*.json"))
    if not files:
        raise BuildError(f"no ONNX Runtime profile under {prefix}*")
    events = json.loads(files[-1].read_text())
    graph = onnx.load(str(folder / MODEL), load_external_data=False).graph
    top = {node.name for node in graph.node}
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    decode = [(r["ts"], r["ts"] + r["dur"]) for r in runs[1:]]  # the first run: the prefill
    times: dict[str, list[float]] = {}
    for e in events:
        name = e.get("name", "").removesuffix("_kernel_time")
        if e.get("cat") == "Node" and name in top and any(lo <= e["ts"] <= hi
                                                         for lo, hi in decode):
            times.setdefault(name, []).append(e["dur"] / 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    ffn = sum(v for k, v in med.items() if _is_ffn(k))
    return Split(ffn, sum(med.values()) - ffn)


# ---------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Result:
    row: Row
    gate_le0: float | None
    stock: list[Generation]
    fffc: list[Generation]
    stock_split: Split | None
    fffc_split: Split | None
    error: str | None = None
    lowering: Lowering | None = None
    detail: str = ""  # predictor rows: the predictors' held-out quality

    def tok_s(self, runs: list[Generation]) -> list[float]:
        return [1.0 / g.decode for g in runs]


def _spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values),
                                              max(values)))


def timed_runs(stock_dir: Path, fffc_dir: Path, prompt: np.ndarray, n: int, runs: int,
               threads: int) -> tuple[list[Generation], list[Generation]]:
    models = {"stock": _model(stock_dir, threads), "fffc": _model(fffc_dir, threads)}
    for m in models.values():  # warm-up: first-call allocations, page faults
        generate(m, prompt[: min(len(prompt), 16)], 4)
    out: dict[str, list[Generation]] = {k: [] for k in models}
    for r in range(runs):
        order = ["stock", "fffc"] if r % 2 == 0 else ["fffc", "stock"]
        for key in order:
            time.sleep(0.2)  # the other model's intra-op threads stop spinning
            out[key].append(generate(models[key], prompt, n))
    del models
    gc.collect()
    return out["stock"], out["fffc"]


def _text_ids(tokenizer, length: int, seed: int) -> np.ndarray:
    """``length`` token ids: ``tokenizer`` (a ``tokenizers.Tokenizer``) on generated text."""
    ids: list[int] = []
    while len(ids) < length:
        ids.extend(tokenizer.encode(" ".join(_text(8, seed))).ids)
        seed += 1
    return np.asarray(ids[:length], dtype=np.int32)


def _prompt(genai: Path, length: int) -> np.ndarray:
    from tokenizers import Tokenizer

    return _text_ids(Tokenizer.from_file(str(genai / "tokenizer.json")), length, SEED + 2)


DRELU_GOAL = {"fp32": 1.6, "int4": 1.4}  # decode tokens/s ratio asked for dReLU at 90%


def rows(variants: Sequence[Variant], teal: bool, levels: Sequence[float],
         precision: str = "fp32", predictor_rank: int = 0) -> list[Row]:
    """Exact (and with ``predictor_rank``, predictor) rows of the ReLU-gated variants, then
    TEAL's of SwiGLU."""
    out = []
    suffix = "" if precision == "fp32" else f", {precision}"
    for v in variants:
        if v is Variant.SWIGLU:
            continue
        out.append(Row(v, f"{v.value}, exact{suffix}", Decision.EXACT, (),
                       DRELU_GOAL[precision] if v is Variant.DRELU else None))
        if predictor_rank:
            out.append(Row(v, f"{v.value}, predictor{suffix}", Decision.PREDICTOR,
                           ("--budget", "predictor"), None, predictor_rank))
    if teal:
        for s in levels:
            out.append(Row(Variant.SWIGLU, f"swiglu, TEAL {s:.0%}{suffix}", Decision.TEAL,
                           ("--budget", f"uniform={s}"), 1.2 if abs(s - 0.5) < 1e-9 else None))
    return out


_GATES: dict[Path, float] = {}  # gate_fraction by GenAI folder: rows of a variant share it


def run_row(row: Row, args, shape: Shape, root: Path) -> Result:
    v = row.variant
    base = root / shape.key() / (f"{v.value}-s{args.sparsity}" if v.shaped else v.value)
    base.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    hf = _cached(base / "hf", lambda p: checkpoint(shape, v, args.sparsity, args.prompt,
                                                   args.generate, p))
    fp32 = args.precision == "fp32"
    genai = _cached(base / ("genai" if fp32 else f"genai-{args.precision}"),
                    lambda p: genai_folder(hf, v, p, args.precision))
    print(f"[{row.label}] checkpoint and GenAI folder: {time.perf_counter() - t:.0f}s",
          flush=True)
    prompt = _prompt(genai, args.prompt)
    frac = None
    if v.shaped:
        if genai not in _GATES:
            _GATES[genai] = gate_fraction(genai, prompt, args.generate, args.threads)
        frac = _GATES[genai]
        print(f"[{row.label}] gate pre-activations ≤ 0 on decode steps: {frac:.1%} "
              f"(target {args.sparsity:.0%})", flush=True)
    compile_args = list(row.compile_args)
    detail = ""
    tag = row.tag(args)
    if args.quick:  # the kernels at every token count: no crossover decided by noise
        compile_args += ["--max-sparse-tokens", "0"]
        tag += "-k0"
    try:
        if row.calibrated:
            calib = calibration(genai, base, args, row)
            compile_args = ["--calibration", str(calib), *compile_args]
            if row.mode is Decision.PREDICTOR:
                detail = predictor_quality(calib)
                print(f"[{row.label}] predictors: {detail}", flush=True)
        t = time.perf_counter()
        compiled = _cached(base / tag, lambda p: assemble(genai, p, compile_args))
    except BuildError as e:
        print(f"[{row.label}] {e}", flush=True)
        return Result(row, frac, [], [], None, None, error=_last_line(str(e)), detail=detail)
    print(f"[{row.label}] compiled: {time.perf_counter() - t:.0f}s", flush=True)
    lowering = Lowering.read(compiled)
    print(f"[{row.label}] fffc compile: {lowering.describe(row.mode)}", flush=True)
    if not lowering.lowered(row.mode):
        print(f"[{row.label}] no site runs a {row.mode.value} kernel at a decode step: "
              "not timed", flush=True)
        return Result(row, frac, [], [], None, None, lowering=lowering, detail=detail)
    stock, fffc_runs = timed_runs(genai, compiled, prompt, args.generate, args.runs,
                                  args.threads)
    splits: list[Split | None] = [None, None]
    if args.profile:
        splits = [profile(d, prompt, args.generate, args.threads, base / f"profile-{k}")
                  for d, k in ((genai, "stock"), (compiled, tag))]
    return Result(row, frac, stock, fffc_runs, *splits, lowering=lowering, detail=detail)


# ---------------------------------------------------------------------------- the table


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _versions() -> str:
    import onnxruntime
    import onnxruntime_genai

    return f"onnxruntime {onnxruntime.__version__}, onnxruntime-genai {onnxruntime_genai.__version__}"


def table(results: Sequence[Result], args, shape: Shape) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    share = shape.ffn_byte_share()
    kept = 1 - args.sparsity
    # bytes read / the dense FFN's: fp32, a float16 copy of the gate then the kept rows of all
    # three; int4, the gate's codes then the kept up and down rows
    screened = (0.5 + 3 * kept) / 3 if args.precision == "fp32" else (1 + 2 * kept) / 3
    lines = [
        f"LLaMA-shaped, hidden {shape.hidden}, FFN {shape.ffn}, {shape.layers} layers, "
        f"{shape.heads} heads / {shape.kv_heads} KV heads, vocabulary {shape.vocab}; "
        f"{args.precision} (the builder's -p), "
        f"{args.threads} threads; prompt {args.prompt}, generate {args.generate}, greedy; "
        f"{args.runs} runs each, interleaved",
        f"date: {now}; machine: {_cpu()}; {_versions()}",
        f"command: `{' '.join(['python bench/bench_llm_decode.py', *sys.argv[1:]])}`",
        f"FFNs: {share:.0%} of the weight bytes a decode step reads. Bounds on the decode "
        f"ratio by bytes: {1 / (1 - share + share * screened):.2f}x with the FFNs reading "
        + (f"a float16 copy of the gate and {kept:.0%} of the gate's, up's and down's rows "
           "(the screened exact kernel)" if args.precision == "fp32" else
           f"the gate's int4 codes and {kept:.0%} of the up's and down's rows")
        + f", {1 / (1 - share):.2f}x with the FFNs free",
        "",
        "| model | gate ≤ 0 (decode) | fffc's sites at a decode step | decode tok/s stock "
        "(min / median / max) | fffc | decode ratio (median; runs) | goal | time to first "
        "token, ms, stock | fffc | prefill ratio | profiled ms per decode step (node medians), "
        "FFN + rest: stock → fffc (ratio) | same tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        gate = f"{r.gate_le0:.1%}" if r.gate_le0 is not None else "–"
        label = r.row.label + (f" ({r.detail})" if r.detail else "")
        sites = r.lowering.short(r.row.mode) if r.lowering is not None else "–"
        if r.error or not r.fffc:
            why = (f"fffc compile failed: {r.error}" if r.error else
                   f"not timed: no site runs a {r.row.mode.value} kernel")
            lines.append(f"| {label} | {gate} | {sites} | – | – | {why} | "
                         "– | – | – | – | – | – |")
            continue
        s, f = r.tok_s(r.stock), r.tok_s(r.fffc)
        ratio = statistics.median(f) / statistics.median(s)
        pairs = [b / a for a, b in zip(s, f, strict=True)]
        if r.row.decode_goal is None:
            goal = "–"
        else:
            goal = f"≥ {r.row.decode_goal}x: {'met' if ratio >= r.row.decode_goal else 'not met'}"
        ts = [g.ttft * 1e3 for g in r.stock]
        tf = [g.ttft * 1e3 for g in r.fffc]
        pre = statistics.median(ts) / statistics.median(tf)
        pre_goal = "met" if pre >= 0.95 else "not met"

        a, b = r.stock_split, r.fffc_split
        split = "–" if a is None or b is None else (
            f"{a.ffn_ms:.1f} + {a.rest_ms:.1f} → {b.ffn_ms:.1f} + {b.rest_ms:.1f} "
            f"({a.total_ms / b.total_ms:.2f}x)")

        same = all(a.tokens == b.tokens for a, b in zip(r.stock, r.fffc, strict=True))
        lines.append(
            f"| {label} | {gate} | {sites} | {_spread(s)} | {_spread(f)} | {ratio:.2f}x "
            f"({min(pairs):.2f}–{max(pairs):.2f}) | {goal} | {_spread(ts, '{:.0f}')} | "
            f"{_spread(tf, '{:.0f}')} | {pre:.2f}x (≥ 0.95: {pre_goal}) | "
            f"{split} | {'yes' if same else 'no'} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a tiny model (hidden 128, 2 layers), prompt 16, generate 16, 1 run, "
                         "dReLU only, exact and predictor (rank 16), the kernels at every "
                         "token count: a smoke test")
    for f in dataclasses.fields(Shape):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=None,
                        help=f"default {f.default}")
    ap.add_argument("--variants", default=None,
                    help="comma-separated: drelu, relu (exact modes; default both, "
                         "--quick: drelu)")
    ap.add_argument("--teal", action="store_true",
                    help="also SwiGLU with TEAL calibrated on decode steps (needs fffc "
                         "calibrate --prompts)")
    ap.add_argument("--teal-levels", default="0.4,0.5")
    ap.add_argument("--predictor", action=argparse.BooleanOptionalAction, default=None,
                    help="also the ReLU-gated variants in predictor mode: fffc calibrate "
                         "--predictor-rank R --predictor-sparsity SPARSITY on decode steps (the "
                         "--teal-prompts and --teal-generate texts), fffc compile --budget "
                         "predictor (default: off, --quick: on)")
    ap.add_argument("--predictor-rank", type=int, default=None,
                    help="the predictors' rank (default 128, --quick: 16)")
    ap.add_argument("--teal-prompts", type=int, default=4,
                    help="calibration prompts of TEAL and the predictors (text other than "
                         "the timed prompt's)")
    ap.add_argument("--teal-generate", type=int, default=32,
                    help="greedy tokens per calibration prompt: its decode steps are the "
                         "statistics' and the predictors' rows")
    ap.add_argument("--sparsity", type=float, default=0.9,
                    help="fraction of gate pre-activations set to be ≤ 0")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 128)")
    ap.add_argument("--generate", type=int, default=None, help="new tokens (default 128)")
    ap.add_argument("--runs", type=int, default=None, help="runs per model (default 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("fp32", "int4"), default="fp32",
                    help="the builder's -p: fp32, or int4 (fffc's int4 kernels against ONNX "
                         "Runtime's MatMulNBits)")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="skip the profiled generation (FFN / rest split)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/fffc-llm-decode"),
                    help="models are built here once and reused")
    args = ap.parse_args(argv)

    base = QUICK if args.quick else Shape()
    shape = Shape(**{f.name: getattr(args, f.name) if getattr(args, f.name) is not None
                     else getattr(base, f.name) for f in dataclasses.fields(Shape)})
    args.prompt = args.prompt or (16 if args.quick else 128)
    args.generate = args.generate or (16 if args.quick else 128)
    args.runs = args.runs or (1 if args.quick else 3)
    names = args.variants or ("drelu" if args.quick else "drelu,relu")
    variants = [Variant(v) for v in names.split(",") if v]
    levels = [float(s) for s in args.teal_levels.split(",") if s]
    predictor = args.quick if args.predictor is None else args.predictor
    rank = (args.predictor_rank if args.predictor_rank is not None
            else 16 if args.quick else 128)
    if predictor and not 0 < rank <= shape.hidden:
        ap.error(f"--predictor-rank must be in 1..{shape.hidden} (the hidden size), got {rank}")
    os.environ.setdefault("FFFC_NUM_THREADS", str(args.threads))

    teal = args.teal
    if (teal or predictor) and not teal_available():
        print("note: SwiGLU/TEAL and the predictor rows skipped: this fffc's `fffc calibrate` "
              "has no --prompts (calibration on decode steps)", flush=True)
        teal = predictor = False
    elif not teal:
        print("note: SwiGLU/TEAL not run (--teal runs it)", flush=True)
    if predictor and not any(v.shaped for v in variants):
        print("note: no predictor row: --predictor takes the relu and drelu variants",
              flush=True)

    results = [run_row(r, args, shape, args.cache)
               for r in rows(variants, teal, levels, args.precision,
                             rank if predictor else 0)]
    print()
    print(table(results, args, shape))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
