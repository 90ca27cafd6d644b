"""Feeds for a model's inputs, made up from what each input means (``fffc.frontend.interface``).

An encoder gets random floats, in-vocabulary token ids, all-ones masks. A decoder with a KV
cache gets the calls generation makes: a prefill (``tokens`` new tokens on an empty cache) and
decode calls (one token on the cache the previous call returned), with the attention mask over
past + current tokens, position ids continuing the past, and GroupQueryAttention's
``seqlens_k`` / ``total_sequence_length`` where the model takes them as inputs. Token ids are
random, or given (``Feeds.greedy``: a prompt's, then those the model generates).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from ..frontend.interface import Cache, Input, Interface, Role, interface, need_data

Feed = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]  # a model's outputs by name

_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_,
}
DECODE_PAST = 16  # a decode call's cache length where no earlier call filled it


def _vocab_sizes(proto: onnx.ModelProto) -> dict[str, int]:
    """Inputs consumed as Gather indices into an initializer table → that table's rows."""
    inits = {i.name: i for i in proto.graph.initializer}
    out: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in inits:
            rows = inits[node.input[0]].dims[0]
            out[node.input[1]] = min(out.get(node.input[1], rows), rows)
    return out


class Feeds:
    """Makes feeds for one model."""

    def __init__(self, proto: onnx.ModelProto, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.interface: Interface = interface(proto, self.path)
        self.vocab = _vocab_sizes(proto)
        for i in self.interface.inputs:
            if i.elem_type not in _NP_TYPES:
                raise need_data(f"input {i.name!r} has element type "
                                f"{onnx.TensorProto.DataType.Name(i.elem_type)}", self.path)

    @property
    def decoder(self) -> bool:
        return self.interface.decoder

    def encoder(self, batch: int, seq: int, rng: np.random.Generator) -> Feed:
        """Symbolic dims: the first one is the batch, the others the sequence."""
        feed = {}
        for i in self.interface.inputs:
            dims, seen = [], False
            for d in i.dims:
                if isinstance(d, int):
                    dims.append(d)
                else:
                    dims.append(batch if not seen else seq)
                    seen = True
            feed[i.name] = self._fill(i, dims, rng, past=0)
        return feed

    def _fill(self, i: Input, dims: list[int], rng: np.random.Generator,
              past: int) -> np.ndarray:
        dtype = _NP_TYPES[i.elem_type]
        if i.role is Role.MASK or dtype == np.bool_:
            return np.ones(dims, dtype=dtype)
        if i.role is Role.TOKEN_TYPES:
            return np.zeros(dims, dtype=dtype)
        if i.role in (Role.POSITIONS, Role.CACHE_POSITION):
            return np.broadcast_to(np.arange(past, past + dims[-1], dtype=dtype), dims).copy()
        if np.issubdtype(dtype, np.integer):
            return rng.integers(0, self.vocab.get(i.name, 100), size=dims).astype(dtype)
        return rng.standard_normal(dims).astype(dtype)

    def call(self, batch: int, tokens: int, seed: int, past: int = 0,
             cache: dict[str, np.ndarray] | None = None, ids: np.ndarray | None = None) -> Feed:
        """One call of ``tokens`` new tokens. A decoder's cache: ``cache`` (past input →
        array, e.g. the present outputs of the previous call), else ``past`` random entries;
        its token ids: ``ids`` [batch, tokens], else random in-vocabulary ones."""
        rng = np.random.default_rng(seed)
        if not self.decoder:
            if ids is not None:
                raise ValueError("given token ids need a decoder")
            return self.encoder(batch, tokens, rng)
        if ids is not None:
            if not self.interface.named(Role.IDS):
                raise need_data("the decoder takes no token ids (e.g. input embeddings "
                                "instead)", self.path)
            if np.shape(ids) != (batch, tokens):
                raise ValueError(f"ids of shape {np.shape(ids)} for {batch} x {tokens} tokens")
        if cache:
            c = self.interface.caches[0]
            past = cache[c.input.name].shape[c.past_axis]
        total = past + tokens
        feed: Feed = {}
        for c in self.interface.caches:
            if cache:
                feed[c.input.name] = cache[c.input.name]
            else:
                feed[c.input.name] = self._cache(c, batch, past, rng)
        for i in self.interface.inputs:
            if i.role is Role.PAST:
                continue
            if i.role is Role.IDS and ids is not None:
                feed[i.name] = np.asarray(ids).astype(_NP_TYPES[i.elem_type])
                continue
            feed[i.name] = self._decoder_input(i, batch, tokens, past, total, rng)
        return feed

    def _cache(self, c: Cache, batch: int, past: int, rng: np.random.Generator) -> np.ndarray:
        dims = [batch if a == 0 else past if a == c.past_axis else s
                for a, s in enumerate(c.sizes)]
        return rng.standard_normal(dims).astype(_NP_TYPES[c.input.elem_type])

    def _decoder_input(self, i: Input, batch: int, tokens: int, past: int, total: int,
                       rng: np.random.Generator) -> np.ndarray:
        dtype = _NP_TYPES[i.elem_type]
        if i.role is Role.SEQLENS_K:
            return np.full([batch], total - 1, dtype=dtype)
        if i.role is Role.TOTAL_LENGTH:
            return np.array(total, dtype=dtype).reshape([1] * len(i.dims))
        if i.role is Role.USE_CACHE:
            return np.full([d if isinstance(d, int) else 1 for d in i.dims], past > 0,
                           dtype=dtype)
        if i.role is Role.CACHE_POSITION:
            return np.arange(past, total, dtype=dtype)
        lengths = {Role.MASK: total}
        if i.role not in (Role.IDS, Role.EMBEDS, Role.MASK, Role.POSITIONS, Role.TOKEN_TYPES):
            raise need_data(f"the decoder input {i.name!r} {list(i.dims)} has no role fffc "
                            "knows (token ids, embeddings, masks, positions, caches)", self.path)
        dims = []
        for a, d in enumerate(i.dims):
            if isinstance(d, int):
                dims.append(d)
            elif a == 0:
                dims.append(batch)
            elif a == 1:
                dims.append(lengths.get(i.role, tokens))
            else:
                raise need_data(f"dim {a} ({d!r}) of the decoder input {i.name!r} is not fixed",
                                self.path)
        return self._fill(i, dims, rng, past)

    def presents(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The next call's cache from a call's outputs (by output name)."""
        out = {}
        for c in self.interface.caches:
            if c.present is None or c.present not in outputs:
                raise need_data(f"no present output continues the cache input {c.input.name!r}",
                                self.path)
            out[c.input.name] = outputs[c.present]
        return out

    def generation(self, run: Callable[[Feed], dict[str, np.ndarray]], first: Feed,
                   steps: int, seed: int) -> list[Feed]:
        """A decoder's calls as generation makes them: ``first`` (e.g. a prefill on an empty
        cache), then ``steps`` one-token calls each on the cache the previous call returned
        (``run``: the model's outputs by name for a feed)."""
        batch = first[self.interface.caches[0].input.name].shape[0]
        feeds = [first]
        for k in range(steps):
            cache = self.presents(run(feeds[-1]))
            feeds.append(self.call(batch, 1, seed + 1 + k, cache=cache))
        return feeds

    def greedy(self, run: Callable[[Feed], Outputs], prompt: Sequence[int], new_tokens: int,
               stop: Collection[int] = ()) -> Iterator[tuple[Feed, Outputs]]:
        """A decoder's calls in a greedy generation after ``prompt`` (token ids, batch 1), with
        the model's outputs of each (``run``: by name): the prefill of the prompt on an empty
        cache, then one call per generated token — the argmax of the previous call's last
        logits row, on the cache that call returned — for ``new_tokens`` tokens, or until a
        ``stop`` token is generated (which is not fed: the generation ends there)."""
        logits = self.interface.logits
        if logits is None:
            raise need_data("no output of the decoder is recognisably its logits", self.path)
        feed = self.call(1, len(prompt), 0, ids=np.asarray([prompt]))
        for k in range(new_tokens + 1):
            out = run(feed)
            yield feed, out
            if k == new_tokens:
                return
            token = int(np.argmax(out[logits][0, -1]))
            if token in stop:
                return
            feed = self.call(1, 1, 0, cache=self.presents(out), ids=np.array([[token]]))


def probe_inputs(proto: onnx.ModelProto, batch: int, seq: int, seed: int,
                 count: int = 2, path: str | Path | None = None) -> list[Feed]:
    """``count`` feeds of ``seq``, ``seq + 1``, ... tokens; a decoder's on a random cache of
    ``DECODE_PAST`` entries when ``seq`` is 1 (a decode call), on an empty one otherwise."""
    f = Feeds(proto, path)
    if not f.decoder:
        rng = np.random.default_rng(seed)
        return [f.encoder(batch, seq + k, rng) for k in range(count)]
    past = DECODE_PAST if seq == 1 else 0
    return [f.call(batch, seq + k, seed + k, past=past) for k in range(count)]


def run_by_name(session) -> Callable[[Feed], dict[str, np.ndarray]]:
    names = [o.name for o in session.get_outputs()]
    return lambda feed: dict(zip(names, session.run(None, feed), strict=True))


