"""onnxruntime-genai's view of a decoder graph with a KV cache: its config and a byte-level tokenizer.

For graphs with the decoder-with-past names (``input_ids``, ``attention_mask``,
``past_key_values.{i}.key|value`` -> ``logits``, ``present.{i}.key|value``) over byte tokens; the
files make the bundle folder an onnxruntime-genai model folder as it is.
"""
from __future__ import annotations


def genai_files(layers: int, heads: int, head_dim: int, context: int, vocab: int = 256) -> dict[str, dict]:
    """``genai_config.json``, ``tokenizer.json`` and ``tokenizer_config.json`` for onnxruntime-genai.

    The generic ``decoder`` type with our input/output names (``gpt2`` would expect one stacked cache
    per layer); the cache is not shared between past and present (the graph concatenates); there is
    no end-of-text byte, so the NUL byte (id 0) plays it. The tokenizer is GPT-2's byte-level BPE with
    no merges and each byte's character mapped to the byte's own value.
    """
    names = {"input_ids": "input_ids", "attention_mask": "attention_mask",
             "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    outputs = {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"}
    config = {
        "model": {"type": "decoder", "vocab_size": vocab, "context_length": context,
                  "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
                  "decoder": {"filename": "model.onnx", "session_options": {"provider_options": []},
                              "head_size": head_dim, "hidden_size": heads * head_dim, "num_attention_heads": heads,
                              "num_hidden_layers": layers, "num_key_value_heads": heads,
                              "inputs": names, "outputs": outputs}},
        "search": {"do_sample": False, "max_length": context, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0, "early_stopping": True, "length_penalty": 1.0,
                   "no_repeat_ngram_size": 0, "diversity_penalty": 0.0}}
    # GPT-2's byte -> printable character table: printable bytes stand for themselves, the rest are
    # moved to 256 + n
    shown = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in shown}
    chars.update({b: chr(256 + n) for n, b in enumerate(b for b in range(256) if b not in chars)})
    level = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tokenizer = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
                 "pre_tokenizer": {"type": "ByteLevel", **level}, "post_processor": None,
                 "decoder": {"type": "ByteLevel", **level},
                 "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                           "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                           "vocab": {chars[b]: b for b in range(256)}, "merges": []}}
    tokenizer_config = {"tokenizer_class": "GPT2Tokenizer", "add_bos_token": False, "add_eos_token": False,
                        "model_max_length": context}
    return {"genai_config.json": config, "tokenizer.json": tokenizer, "tokenizer_config.json": tokenizer_config}
