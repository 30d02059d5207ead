"""A tiny, randomly initialised CLIP model and processor written to a folder, for tests and
smoke runs of the CLIP poisoners where no real weights are at hand (its numbers mean nothing)."""

from __future__ import annotations

from pathlib import Path


def save_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """One layer of width 16 per tower, 32x32 input, 8-d embeddings, a byte-level tokenizer;
    saved with save_pretrained, as a real model would be. Returns the folder."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = Path(folder)
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    start, end = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": start, "<|endoftext|>": end})
    tiny = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    config = CLIPConfig(
        text_config={**tiny, "vocab_size": len(vocab), "max_position_embeddings": 64,
                     "bos_token_id": start, "eos_token_id": end, "pad_token_id": end},
        vision_config={**tiny, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(
        image_processor=images, tokenizer=CLIPTokenizer(vocab=vocab, merges=[])
    ).save_pretrained(folder)
    return folder
