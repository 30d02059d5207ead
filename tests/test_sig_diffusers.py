"""SIG's real backend: a tiny, randomly initialised SD + ControlNet pipeline built from configs,
saved to folders and driven through the same path as real weights (two steps, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from ueb.errors import ConfigError


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for raw bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = keep[:], 0
    for b in range(256):
        if b not in keep:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tiny_pipeline(root):
    """Save a tiny SD + ControlNet and a tiny CLIP text model (random weights) as local folders;
    returns (sd, controlnet, clip)."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        StableDiffusionControlNetPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    torch.manual_seed(0)
    chars = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tok = root / "tokenizer-src"
    tok.mkdir(parents=True)
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per character
    tokenizer = CLIPTokenizer(str(tok / "vocab.json"), str(tok / "merges.txt"), model_max_length=77)
    end = vocab["<|endoftext|>"]
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                            num_hidden_layers=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                            eos_token_id=end, pad_token_id=end, projection_dim=16)
    text = CLIPTextModel(config)
    # A CLIP text tower with projection, for TPC's `--encoder clip` path.
    CLIPTextModelWithProjection(config).save_pretrained(root / "clip")
    tokenizer.save_pretrained(root / "clip")
    blocks = dict(block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=32, norm_num_groups=4, attention_head_dim=4)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **blocks)
    control = ControlNetModel(in_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                              conditioning_embedding_out_channels=(8, 16), **blocks)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    pipe = StableDiffusionControlNetPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, controlnet=control,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.save_pretrained(root / "sd")
    control.save_pretrained(root / "controlnet")
    return root / "sd", root / "controlnet", root / "clip"


@pytest.fixture
def small_corpus(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("\n".join([
        "a red bus on a city street", "a cat asleep on a sofa", "a bowl of soup on a table",
        "a sailboat on a calm lake", "a skier on a snowy slope", "a dog catching a frisbee",
    ]))
    return f


def test_tiny_diffusers_pipeline_end_to_end(run_context, tmp_path, small_corpus):
    from ueb_sig import SemanticBank, load_or_build_bank

    sd, cn, clip = write_tiny_pipeline(tmp_path / "weights")
    opts = dict(sd_model=str(sd), controlnet=str(cn), steps=2, gen_size=32, batch_size=2, prompts=str(small_corpus),
                encoder="clip", clip_model=str(clip))
    bank = load_or_build_bank(run_context, 2, 3, 16, backend="diffusers", seed=0, **opts)
    assert bank.images.shape == (2, 3, 3, 16, 16) and bank.images.dtype == torch.uint8
    assert bank.backend == "diffusers" and "ControlNet" in bank.recipe["generator"]
    assert bank.encoder.startswith("clip:clip#")
    assert bank.recipe["weights"]["sd_model"] == "sd" and bank.recipe["options"]["steps"] == 2
    assert len(set(bank.prompts)) == 2 and bank.edges is not None and bank.edges.shape == (2, 32, 32)
    # Different noise per sample: the three images of a class are not copies of each other.
    x = bank.images.float()
    assert (x[:, 0] - x[:, 1]).abs().mean() > 1 and (x[:, 1] - x[:, 2]).abs().mean() > 1
    again = SemanticBank.load(bank.path)
    assert again.content_hash == bank.content_hash and again.backend == "diffusers"


@pytest.mark.parametrize(
    ("which", "flag"),
    [("sd_none", "--sd-model"), ("sd_missing", "--sd-model"), ("sd_empty", "--sd-model"), ("cn_missing", "--controlnet")],
)
def test_missing_weights_folder_names_the_flag(run_context, tmp_path, which, flag):
    from ueb_sig import load_or_build_bank

    (tmp_path / "empty").mkdir()
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    sd = {"sd_none": None, "sd_missing": str(tmp_path / "nope"), "sd_empty": str(tmp_path / "empty")}.get(which, str(tmp_path / "sd"))
    with pytest.raises(ConfigError) as err:
        load_or_build_bank(run_context, 2, 2, 16, backend="diffusers", sd_model=sd, controlnet=str(tmp_path / "nope-cn"))
    line = err.value.line()
    assert flag in line and "\n" not in line


def test_missing_weights_command_exits_with_one_line(tmp_path):
    import typer
    from typer.testing import CliRunner
    from ueb_sig.cli import add_commands

    app = typer.Typer()
    add_commands(app)
    r = CliRunner().invoke(app, ["semantic-images", "--backend", "diffusers", "--out", str(tmp_path / "b"),
                                 "--controlnet", str(tmp_path), "--cache", str(tmp_path / "c"), "--device", "cpu"])
    assert r.exit_code == 2
    assert "--sd-model" in r.output and len(r.output.strip().splitlines()) == 1
