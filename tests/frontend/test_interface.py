"""Input roles of decoder interfaces as the exporters write them, and the feeds made from them:
shapes that agree with each other (cache length, mask over past + current, positions)."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from fffc.contract.errors import UnsupportedModelError
from fffc.frontend.interface import Role, interface
from fffc.verify.feeds import Feeds


def _model(inputs, outputs, path=None):
    """A graph with the given interface: nothing runs it, only the interface is read."""
    ins = [helper.make_tensor_value_info(n, t, d) for n, t, d in inputs]
    outs = [helper.make_tensor_value_info(n, t, d) for n, t, d in outputs]
    node = helper.make_node("Identity", [inputs[0][0]], ["unused"])
    g = helper.make_graph([node], "g", ins, outs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


F, I64, I32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
OPTIMUM = _model(
    [("input_ids", I64, ["batch_size", "sequence_length"]),
     ("attention_mask", I64, ["batch_size", "past_sequence_length + sequence_length"]),
     ("position_ids", I64, ["batch_size", "sequence_length"]),
     ("past_key_values.0.key", F, ["batch_size", 2, "past_sequence_length", 32]),
     ("past_key_values.0.value", F, ["batch_size", 2, "past_sequence_length", 32])],
    [("logits", F, ["batch_size", "sequence_length", 300]),
     ("present.0.key", F, ["batch_size", 2, "past_sequence_length + sequence_length", 32]),
     ("present.0.value", F, ["batch_size", 2, "past_sequence_length + sequence_length", 32])])


def test_optimum_roles_and_presents():
    it = interface(OPTIMUM)
    assert it.decoder
    assert [i.role for i in it.inputs] == [Role.IDS, Role.MASK, Role.POSITIONS, Role.PAST,
                                          Role.PAST]
    assert [(c.input.name, c.present, c.past_axis, c.sizes) for c in it.caches] == [
        ("past_key_values.0.key", "present.0.key", 2, (None, 2, None, 32)),
        ("past_key_values.0.value", "present.0.value", 2, (None, 2, None, 32))]


def test_decode_call_shapes_agree():
    f = Feeds(OPTIMUM)
    feed = f.call(batch=3, tokens=1, seed=0, past=5)
    assert feed["input_ids"].shape == (3, 1)
    assert feed["attention_mask"].shape == (3, 6)
    assert feed["past_key_values.0.key"].shape == (3, 2, 5, 32)
    np.testing.assert_array_equal(feed["position_ids"], [[5], [5], [5]])
    prefill = f.call(batch=1, tokens=4, seed=0)
    assert prefill["past_key_values.0.value"].shape == (1, 2, 0, 32)
    np.testing.assert_array_equal(prefill["position_ids"], [[0, 1, 2, 3]])


def test_generation_continues_the_returned_cache():
    f = Feeds(OPTIMUM)
    first = f.call(batch=2, tokens=3, seed=0)
    grown = {}

    def run(feed):  # a stand-in model: the present is the past plus one entry per token
        t = feed["input_ids"].shape[1]
        return {f"present.0.{kv}": np.concatenate(
            [feed[f"past_key_values.0.{kv}"], np.full((2, 2, t, 32), len(grown), np.float32)],
            axis=2) for kv in ("key", "value")}

    calls = f.generation(run, first, steps=2, seed=1)
    assert [c["past_key_values.0.key"].shape[2] for c in calls] == [0, 3, 4]
    assert [c["attention_mask"].shape for c in calls] == [(2, 3), (2, 4), (2, 5)]
    np.testing.assert_array_equal(calls[2]["position_ids"], [[4], [4]])


def test_genai_head_size_from_its_config(tmp_path):
    m = _model([("input_ids", I64, ["batch_size", "sequence_length"]),
                ("attention_mask", I64, ["batch_size", "total_sequence_length"]),
                ("past_key_values.0.key", F, ["batch_size", 2, "past_sequence_length",
                                              "kv_cache_dim"])],
               [("present.0.key", F, ["batch_size", 2, "total_sequence_length", "kv_cache_dim"])])
    with pytest.raises(UnsupportedModelError, match="--data"):
        interface(m, tmp_path / "model.onnx")
    (tmp_path / "genai_config.json").write_text('{"model": {"decoder": {"head_size": 16}}}')
    assert interface(m, tmp_path / "model.onnx").caches[0].sizes == (None, 2, None, 16)


def test_gqa_inputs_follow_the_lengths():
    m = _model([("input_ids", I64, ["b", "s"]),
                ("seqlens_k", I32, ["b"]), ("total_sequence_length", I32, []),
                ("past_key.0", F, ["b", 4, "past_len", 8])],
               [("present_key.0", F, ["b", 4, "total_len", 8])])
    feed = Feeds(m).call(batch=2, tokens=1, seed=0, past=7)
    np.testing.assert_array_equal(feed["seqlens_k"], [7, 7])
    assert feed["total_sequence_length"].shape == () and int(feed["total_sequence_length"]) == 8


def test_unknown_decoder_input_asks_for_data():
    m = _model([("input_ids", I64, ["b", "s"]), ("mystery", F, ["b", 7]),
                ("past_key_values.0.key", F, ["b", 2, "past", 4])],
               [("present.0.key", F, ["b", 2, "total", 4])])
    with pytest.raises(UnsupportedModelError, match=r"mystery.*--data"):
        Feeds(m).call(batch=1, tokens=2, seed=0)


def test_encoder_inputs_are_not_a_decoder():
    m = _model([("input_ids", I64, ["batch", "seq"]), ("attention_mask", I64, ["batch", "seq"])],
               [("y", F, ["batch", "seq", 8])])
    assert not interface(m).decoder
    feed = Feeds(m).encoder(2, 5, np.random.default_rng(0))
    assert feed["input_ids"].shape == (2, 5) and feed["attention_mask"].sum() == 10


def test_greedy_feeds_back_the_argmax_until_a_stop_token():
    """A stand-in decoder whose next token is the last one fed plus 1: the prompt's prefill,
    then one call per generated token on the cache the previous call returned."""
    f = Feeds(OPTIMUM)
    assert f.interface.logits == "logits"

    def run(feed):
        ids, t = feed["input_ids"], feed["input_ids"].shape[1]
        logits = np.zeros((1, t, 300), np.float32)
        logits[0, -1, (ids[0, -1] + 1) % 300] = 1.0
        grown = {f"present.0.{kv}": np.concatenate(
            [feed[f"past_key_values.0.{kv}"], np.zeros((1, 2, t, 32), np.float32)], axis=2)
            for kv in ("key", "value")}
        return {"logits": logits, **grown}

    calls = [feed for feed, _ in f.greedy(run, [5, 6], new_tokens=2)]
    assert [c["input_ids"].tolist() for c in calls] == [[[5, 6]], [[7]], [[8]]]
    assert [c["past_key_values.0.key"].shape[2] for c in calls] == [0, 2, 3]
    assert [c["attention_mask"].shape for c in calls] == [(1, 2), (1, 3), (1, 4)]
    assert [c["position_ids"].tolist() for c in calls] == [[[0, 1]], [[2]], [[3]]]
    stopped = [feed["input_ids"].tolist() for feed, _ in f.greedy(run, [5, 6], 10, stop={9})]
    assert stopped == [[[5, 6]], [[7]], [[8]]]  # 9 is generated, not fed


def test_given_ids_need_a_token_id_input():
    m = _model([("inputs_embeds", F, ["b", "s", 8]), ("attention_mask", I64, ["b", "t"]),
                ("past_key_values.0.key", F, ["b", 2, "past", 4])],
               [("logits", F, ["b", "s", 10]), ("present.0.key", F, ["b", 2, "total", 4])])
    with pytest.raises(UnsupportedModelError, match="no token ids"):
        Feeds(m).call(1, 2, 0, ids=np.array([[1, 2]]))
