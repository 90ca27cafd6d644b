"""A tiny hand-made decoder with a KV cache in an ONNX Runtime GenAI folder: the fuzzer's
seed for ``genai_config.json`` mutations (no torch, no model builder: built in well under a
second). One layer: embedding, a dReLU FFN on the embeddings, logits; the cache is the
embeddings projected to 2 KV heads of size 8 and appended to the past (attention is left
out: only the cache's shapes and its continuation matter to fffc and GenAI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HIDDEN, FFN, VOCAB, KV_HEADS, HEAD = 32, 64, 64, 2, 8
CONFIG = "genai_config.json"


def decoder(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)

    def w(name, *shape, scale=0.2):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)

    F = TensorProto.FLOAT
    inits = [w("embed", VOCAB, HIDDEN, scale=1.0), w("wg", HIDDEN, FFN), w("wu", HIDDEN, FFN),
             w("wd", FFN, HIDDEN), w("lm_head", HIDDEN, VOCAB), w("wk", HIDDEN, KV_HEADS * HEAD),
             w("wv", HIDDEN, KV_HEADS * HEAD),
             numpy_helper.from_array(np.array([0, 0, KV_HEADS, HEAD], np.int64), "kv_shape")]
    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["x"], name="embed"),
             helper.make_node("MatMul", ["x", "wg"], ["g"], name="gate"),
             helper.make_node("MatMul", ["x", "wu"], ["u"], name="up"),
             helper.make_node("Relu", ["g"], ["ga"], name="gate_act"),
             helper.make_node("Relu", ["u"], ["ua"], name="up_act"),
             helper.make_node("Mul", ["ga", "ua"], ["h"], name="mul"),
             helper.make_node("MatMul", ["h", "wd"], ["y"], name="down"),
             helper.make_node("Add", ["x", "y"], ["r"], name="residual"),
             helper.make_node("MatMul", ["r", "lm_head"], ["logits"], name="lm_head")]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                            ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "total_sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", F,
                                             ["batch_size", "sequence_length", VOCAB])]
    for kv, wname in (("key", "wk"), ("value", "wv")):
        nodes += [helper.make_node("MatMul", ["x", wname], [f"{kv}_flat"], name=f"{kv}_proj"),
                  helper.make_node("Reshape", [f"{kv}_flat", "kv_shape"], [f"{kv}_4d"],
                                   name=f"{kv}_reshape"),
                  helper.make_node("Transpose", [f"{kv}_4d"], [f"{kv}_new"], perm=[0, 2, 1, 3],
                                   name=f"{kv}_transpose"),
                  helper.make_node("Concat", [f"past_key_values.0.{kv}", f"{kv}_new"],
                                   [f"present.0.{kv}"], axis=2, name=f"{kv}_concat")]
        inputs.append(helper.make_tensor_value_info(
            f"past_key_values.0.{kv}", F,
            ["batch_size", KV_HEADS, "past_sequence_length", HEAD]))
        outputs.append(helper.make_tensor_value_info(
            f"present.0.{kv}", F, ["batch_size", KV_HEADS, "total_sequence_length", HEAD]))
    graph = helper.make_graph(nodes, "tiny_decoder", inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def config() -> dict:
    """A ``genai_config.json`` for ``decoder`` (type llama: the names GenAI's builder uses)."""
    return {
        "model": {
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "context_length": 128,
            "type": "llama", "vocab_size": VOCAB,
            "decoder": {
                "filename": "model.onnx", "head_size": HEAD, "hidden_size": HIDDEN,
                "num_attention_heads": KV_HEADS, "num_key_value_heads": KV_HEADS,
                "num_hidden_layers": 1, "session_options": {"log_id": "onnxruntime-genai",
                                                             "provider_options": []},
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "max_length": 128, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False,
                   "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


def folder(dest: Path) -> Path:
    """The GenAI folder: ``genai_config.json``, ``model.onnx`` and a tokenizer-less extra
    file the compiled folder copies."""
    dest.mkdir(parents=True, exist_ok=True)
    decoder(dest / "model.onnx")
    (dest / CONFIG).write_text(json.dumps(config(), indent=4))
    (dest / "special_tokens_map.json").write_text("{}")
    return dest
