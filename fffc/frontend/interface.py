"""What a model's inputs mean: token ids, masks, positions and, for a decoder with a KV
cache, the past key/value inputs and the present outputs that fill them.

Feeds are synthesized from these roles (``fffc.verify.feeds``): a decoder's inputs must agree
with each other (the attention mask spans past + current tokens, position ids continue the
past, a cache holds ``past`` entries of the model's head size), which the first-symbolic-dim-
is-the-batch rule of encoders cannot give. Roles come from the input names the exporters
write (Optimum, ONNX Runtime GenAI's model builder, torch's exporters, Hugging Face
conventions); an input no role fits makes the model one whose feeds the user must give.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..contract.errors import UnsupportedModelError

GENAI_CONFIG = "genai_config.json"


class Role(enum.Enum):
    """What one graph input carries."""

    IDS = "token ids"  # [batch, seq] int
    EMBEDS = "input embeddings"  # [batch, seq, hidden] float
    MASK = "attention mask"  # [batch, seq] (encoders) or [batch, past + seq] (decoders)
    POSITIONS = "position ids"  # [batch, seq], past .. past + seq - 1
    CACHE_POSITION = "cache positions"  # [seq], past .. past + seq - 1
    TOKEN_TYPES = "token type ids"  # zeros
    PAST = "past key/value cache"  # [batch, heads, past, head_size] (any order of dims)
    SEQLENS_K = "GroupQueryAttention seqlens_k"  # [batch] int32: total length - 1
    TOTAL_LENGTH = "GroupQueryAttention total_sequence_length"  # scalar int32
    USE_CACHE = "use_cache_branch"  # [1] bool: past holds entries
    OTHER = "other"  # an encoder's free input: random floats or in-vocabulary ids


_PAST = re.compile(r"(^|[._/])(past|cache)|past_key|key_cache|value_cache", re.I)
_PRESENT = re.compile(r"present|key_cache|value_cache|new_cache", re.I)


def _role(name: str, elem: int, rank: int) -> Role:
    n = name.lower()
    floating = elem in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                        onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    if floating and rank >= 3 and _PAST.search(n):
        return Role.PAST
    if n == "use_cache_branch":
        return Role.USE_CACHE
    if n == "seqlens_k":
        return Role.SEQLENS_K
    if n == "total_sequence_length":
        return Role.TOTAL_LENGTH
    if n == "cache_position":
        return Role.CACHE_POSITION
    if "position" in n:
        return Role.POSITIONS
    if "token_type" in n or "segment" in n:
        return Role.TOKEN_TYPES
    if "mask" in n:
        return Role.MASK
    if n in ("input_ids", "ids", "tokens") or n.endswith("input_ids"):
        return Role.IDS
    if n in ("inputs_embeds", "input_embeds"):
        return Role.EMBEDS
    return Role.OTHER


def need_data(reason: str, path: Path | None) -> UnsupportedModelError:
    """The error for inputs fffc cannot synthesize feeds for: the user gives them."""
    return UnsupportedModelError(f"{reason}: fffc cannot make up inputs for this model; give "
                                 "feeds with --data FEEDS.npz (arrays named like its inputs)",
                                 path=path)


Dim = int | str | None  # a fixed size, a symbol, or unknown


@dataclass(frozen=True)
class Input:
    name: str
    role: Role
    elem_type: int
    dims: tuple[Dim, ...]


@dataclass(frozen=True)
class Cache:
    """One past key or value input: which of its dims is the past length, the fixed size of
    every other dim but the batch (the first), and the present output it is continued from."""

    input: Input
    past_axis: int
    sizes: tuple[int | None, ...]  # per dim: fixed size, None for batch and past
    present: str | None


@dataclass(frozen=True)
class Interface:
    """A model's inputs by role; ``caches`` is non-empty for a decoder with a KV cache, whose
    next-token scores are the output ``logits`` (None where no output is recognisably them)."""

    inputs: tuple[Input, ...]
    caches: tuple[Cache, ...]
    logits: str | None = None

    @property
    def decoder(self) -> bool:
        return bool(self.caches)

    def named(self, role: Role) -> list[Input]:
        return [i for i in self.inputs if i.role is role]


def _dims(vi: onnx.ValueInfoProto) -> tuple[Dim, ...]:
    out: list[Dim] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(d.dim_value)
        else:
            out.append(d.dim_param or None)
    return tuple(out)


MAX_HEAD_SIZE = 1 << 16  # a larger head size in a config is an error, not a model


def _genai_head_size(path: Path | None) -> int | None:
    """``model.decoder.head_size`` of the ``genai_config.json`` beside ``path``: None where
    there is none; a value that is no head size is refused."""
    if path is None:
        return None
    cfg = path.parent / GENAI_CONFIG
    try:
        head = json.loads(cfg.read_text())["model"]["decoder"]["head_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(head, int) or isinstance(head, bool) or not 0 < head <= MAX_HEAD_SIZE:
        raise UnsupportedModelError(f"model.decoder.head_size in {GENAI_CONFIG} is {head!r}, "
                                    f"expected an integer in 1..{MAX_HEAD_SIZE}", path=path)
    return head


def _is_past_dim(d: Dim) -> bool:
    return isinstance(d, str) and ("past" in d.lower() or "seq" in d.lower()
                                    or "len" in d.lower())


def _present_for(name: str, outputs: list[onnx.ValueInfoProto], index: int,
                 pasts: list[str]) -> onnx.ValueInfoProto | None:
    by_name = {o.name: o for o in outputs}
    for a, b in (("past_key_values", "present"), ("past_key", "present_key"),
                 ("past_value", "present_value"), ("past", "present")):
        if a in name and name.replace(a, b, 1) in by_name:
            return by_name[name.replace(a, b, 1)]
    presents = [o for o in outputs if _PRESENT.search(o.name)]
    if len(presents) == len(pasts):
        return presents[index]
    return None


def _logits(outputs: list[onnx.ValueInfoProto], presents: set[str]) -> str | None:
    """The output named logits, else the one output that continues no cache."""
    named = [o.name for o in outputs if "logits" in o.name.lower()]
    rest = [o.name for o in outputs if o.name not in presents]
    return named[0] if len(named) == 1 else rest[0] if len(rest) == 1 else None


def interface(proto: onnx.ModelProto, path: Path | None = None) -> Interface:
    """The roles of ``proto``'s inputs (``path``: where the model was read from, to find a
    GenAI folder's ``genai_config.json``). Raises ``need_data``, asking for ``--data``, for a
    decoder whose cache shapes cannot be determined."""
    inits = {i.name for i in proto.graph.initializer}
    inputs = tuple(Input(vi.name, _role(vi.name, vi.type.tensor_type.elem_type,
                                        len(vi.type.tensor_type.shape.dim)),
                         vi.type.tensor_type.elem_type, _dims(vi))
                   for vi in proto.graph.input if vi.name not in inits)
    pasts = [i for i in inputs if i.role is Role.PAST]
    outputs = list(proto.graph.output)
    caches = []
    for k, inp in enumerate(pasts):
        present = _present_for(inp.name, outputs, k, [p.name for p in pasts])
        pdims = _dims(present) if present is not None else ()
        axes = [a for a, d in enumerate(inp.dims) if a > 0 and _is_past_dim(d)]
        if not axes:  # symbols without a telling name (torch.export's s0, s1, ...)
            axes = [a for a, d in enumerate(inp.dims) if a > 0 and not isinstance(d, int)]
        if len(axes) != 1:
            raise need_data(f"cannot tell which dim of the cache input {inp.name!r} "
                            f"{list(inp.dims)} is the past length", path)
        sizes: list[int | None] = []
        for a, d in enumerate(inp.dims):
            if a == 0 or a == axes[0]:
                sizes.append(None)
            elif isinstance(d, int):
                sizes.append(d)
            elif len(pdims) == len(inp.dims) and isinstance(pdims[a], int):
                sizes.append(pdims[a])
            elif a == len(inp.dims) - 1 and (head := _genai_head_size(path)) is not None:
                sizes.append(head)
            else:
                raise need_data(f"the size of dim {a} ({d!r}) of the cache input "
                                f"{inp.name!r} is not fixed in the model", path)
        caches.append(Cache(inp, axes[0], tuple(sizes),
                            present.name if present is not None else None))
    return Interface(inputs, tuple(caches),
                     _logits(outputs, {c.present for c in caches}) if caches else None)
