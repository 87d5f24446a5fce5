"""A tiny, randomly initialised model of the base model's architecture, with a tokenizer trained offline.

It keeps what differs between the supported models (setup/project.json "architecture": LongRoPE scaling,
partial rotary embeddings, tied embeddings, grouped KV heads, Llama-style or GPT-2-style tokenizer and the
chat special tokens), so the smoke run exercises the same code paths in Olive, peft and the ONNX builder as
the real model, in seconds and without a download.
"""

import json
from pathlib import Path

from project import chat_tokens, end_token

# head_dim 64: onnxruntime's GroupQueryAttention needs rotary_dim / 2 to be a multiple of 8 (Phi-4-mini: 0.75 x 64)
HIDDEN, LAYERS, HEADS, INTERMEDIATE = 192, 2, 3, 384
# max_seq_len of every run on the tiny model: the smoke run and the benchmarks' --tiny
SEQ_LEN = 128
# Wider than the usual 0.02 so that greedy decoding of the random model varies from token to token, which
# makes the ONNX-vs-PyTorch token comparison meaningful.
INIT_STD = 0.2
# One pattern for every pre-tokenizer difference between transformers and onnxruntime-genai: merges never
# cross punctuation, symbols or newlines, so both libraries split text into the same tokens.
PUNCTUATION = r"[\p{P}\p{S}\n]"


def _corpus(project: dict, dataset: Path) -> list[str]:
    chat = project["chat_format"]
    texts = [chat["user"], chat["assistant"], chat["end"]]
    for line in dataset.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            texts += [str(row.get(project["question_column"], "")), str(row.get(project["answer_column"], ""))]
    return texts


def build_tokenizer(project: dict, dataset: Path, out: Path, vocab_size: int = 800):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer

    arch = project["architecture"]
    corpus = _corpus(project, dataset)
    if arch["tokenizer"] == "llama":
        byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(PUNCTUATION), behavior="isolated")
        tokenizer.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False
        )
        tokenizer.train_from_iterator(corpus, trainer)
        tokenizer.pre_tokenizer = None  # as in Phi-3's tokenizer.json
        settings = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "unk_token": "<unk>", "legacy": False}
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(PUNCTUATION), behavior="isolated"), pre_tokenizers.ByteLevel(False, False)]
        )
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tokenizer.train_from_iterator(corpus, trainer)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        settings = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in chat_tokens(project["chat_format"])]
    )
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    settings.update(
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=project["context_length"],
    )
    (out / "tokenizer_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return AutoTokenizer.from_pretrained(out)


def _rope_scaling(arch: dict, head_dim: int = HIDDEN // HEADS) -> dict | None:
    if not arch["rope_scaling"]:
        return None
    rotary_half = int(head_dim * arch["partial_rotary_factor"]) // 2
    return {
        "type": arch["rope_scaling"],
        "short_factor": [1.0] * rotary_half,
        "long_factor": [1.0 + i / rotary_half for i in range(rotary_half)],
    }


def model_config(project: dict, tokenizer, dims: dict | None = None):
    """The Phi3Config of the base model's architecture: the tiny dimensions above unless dims overrides them.

    dims may set hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size and
    initializer_range (setup/benchmark_train.py passes the real model's sizes).
    """
    from transformers import Phi3Config

    arch = project["architecture"]
    size = {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "initializer_range": INIT_STD,
        **(dims or {}),
    }
    heads = size["num_attention_heads"]
    return Phi3Config(
        **size,
        num_key_value_heads=heads // arch["key_value_heads_ratio"],
        max_position_embeddings=project["context_length"],
        original_max_position_embeddings=arch["original_max_position_embeddings"],
        rope_scaling=_rope_scaling(arch, size["hidden_size"] // heads),
        partial_rotary_factor=arch["partial_rotary_factor"],
        tie_word_embeddings=arch["tie_word_embeddings"],
        sliding_window=arch["sliding_window"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["Phi3ForCausalLM"],
    )


def build(project: dict, dataset: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Phi3ForCausalLM

    tokenizer = build_tokenizer(project, dataset, out)
    config = model_config(project, tokenizer)
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids(end_token(project)),
    ]
    model.save_pretrained(out)
    return out
