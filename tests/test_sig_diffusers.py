"""SIG's real backend: a tiny, randomly initialised SD + ControlNet pipeline built from configs,
saved to folders and driven through the same path as real weights (two steps, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from ueb.errors import ConfigError


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for raw bytes."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
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
    vocab = {
        c: i
        for i, c in enumerate(
            chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
        )
    }
    tok = root / "tokenizer-src"
    tok.mkdir(parents=True)
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per character
    tokenizer = CLIPTokenizer(str(tok / "vocab.json"), str(tok / "merges.txt"), model_max_length=77)
    end = vocab["<|endoftext|>"]
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=end,
        pad_token_id=end,
        projection_dim=16,
    )
    text = CLIPTextModel(config)
    # A CLIP text tower with projection, for TPC's `--encoder clip` path.
    CLIPTextModelWithProjection(config).save_pretrained(root / "clip")
    tokenizer.save_pretrained(root / "clip")
    blocks = dict(
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=32,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **blocks,
    )
    control = ControlNetModel(
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        conditioning_embedding_out_channels=(8, 16),
        **blocks,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionControlNetPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        controlnet=control,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "sd")
    control.save_pretrained(root / "controlnet")
    return root / "sd", root / "controlnet", root / "clip"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """(sd, controlnet, clip) folders, written once for the module."""
    return write_tiny_pipeline(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def small_corpus(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text(
        "\n".join(
            [
                "a red bus on a city street",
                "a cat asleep on a sofa",
                "a bowl of soup on a table",
                "a sailboat on a calm lake",
                "a skier on a snowy slope",
                "a dog catching a frisbee",
            ]
        )
    )
    return f


def test_tiny_diffusers_pipeline_end_to_end(run_context, tiny_weights, small_corpus):
    from ueb_sig import SemanticBank, load_or_build_bank
    from ueb_sig.weights import folder_identity

    sd, cn, clip = tiny_weights
    opts = dict(
        sd_model=str(sd),
        controlnet=str(cn),
        steps=2,
        gen_size=32,
        batch_size=2,
        prompts=str(small_corpus),
        encoder="clip",
        clip_model=str(clip),
    )
    bank = load_or_build_bank(run_context, 2, 3, 16, backend="diffusers", seed=0, **opts)
    assert bank.images.shape == (2, 3, 3, 16, 16) and bank.images.dtype == torch.uint8
    assert bank.backend == "diffusers" and "ControlNet" in bank.recipe["generator"]
    assert bank.encoder == f"clip:{folder_identity(clip)['digest']}"
    weights = bank.recipe["weights"]
    assert (
        weights["controlnet"] == folder_identity(cn) and weights["stable_diffusion"]["files"] >= 9
    )
    assert bank.recipe["weight_paths"] == {
        "stable_diffusion": str(sd.resolve()),
        "controlnet": str(cn.resolve()),
        "text_encoder": str(clip.resolve()),
    }
    assert (
        bank.recipe["options"]["steps"] == 2 and bank.recipe["pipeline"]["dtype"] == "torch.float32"
    )
    assert (
        len(set(bank.prompts)) == 2 and bank.edges is not None and bank.edges.shape == (2, 32, 32)
    )
    # Different noise per sample: the three images of a class are not copies of each other.
    x = bank.images.float()
    assert (x[:, 0] - x[:, 1]).abs().mean() > 1 and (x[:, 1] - x[:, 2]).abs().mean() > 1
    again = SemanticBank.load(bank.path)
    assert again.content_hash == bank.content_hash and again.backend == "diffusers"
    manifest = json.loads((bank.path / "manifest.json").read_text())
    assert (
        manifest["weights"] == weights and manifest["weight_paths"] == bank.recipe["weight_paths"]
    )


def _perturb_unet(sd):
    """Change one weight of the UNet in place, keeping every file's size (a 'fine-tune')."""
    from safetensors.torch import load_file, save_file

    f = sd / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(f))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.5
    size = f.stat().st_size
    save_file(tensors, str(f), metadata={"format": "pt"})
    assert f.stat().st_size == size


def test_bank_key_follows_weight_content_not_folder_path(tmp_path, tiny_weights):
    import shutil

    from ueb_sig.bank import SigOptions, make_recipe
    from ueb_sig.diffusion import DiffusionOptions
    from ueb_sig.weights import memo_for

    from ueb.params import params_hash

    sd, cn, _ = tiny_weights
    memo = memo_for(tmp_path / "cache")

    def key(sd_dir):
        sig = SigOptions(sd_model=str(sd_dir), controlnet=str(cn))
        return params_hash(
            make_recipe(2, 3, 16, "diffusers", 0, sig, DiffusionOptions(), memo=memo)
        )

    moved = tmp_path / "elsewhere" / "sd-copy"
    shutil.copytree(sd, moved)
    assert key(moved) == key(sd)  # same weights at another path: the same bank
    memo.save()
    assert str((moved / "unet" / "diffusion_pytorch_model.safetensors").resolve()) in json.loads(
        memo.path.read_text()
    )
    _perturb_unet(moved)  # same configs, same file sizes, other weights
    assert key(moved) != key(sd)


def test_sig_parameters_default_to_the_backend_defaults():
    from ueb_deephiding.poisoner import DeepHidingParams
    from ueb_sig.diffusion import DiffusionOptions

    p, d = DeepHidingParams(), DiffusionOptions()
    for name in ("steps", "guidance_scale", "conditioning_scale", "gen_size", "batch_size"):
        assert getattr(p, f"sig_{name}") == getattr(d, name), name


def _deephiding(name="deephiding", **params):
    from ueb.registry import get_registry

    return get_registry().create(
        "poisoner", name, {"hidden": "sig", "sig_backend": "diffusers", **params}
    )


def _broken(tmp_path, tiny_weights, which):
    """A copy of one tiny folder with one expected file removed."""
    import shutil

    sd, cn, clip = tiny_weights
    src, gone = {
        "sd-unet": (sd, "unet/diffusion_pytorch_model.safetensors"),
        "sd-index": (sd, "model_index.json"),
        "cn": (cn, "config.json"),
        "clip": (clip, "tokenizer.json"),
    }[which]
    dst = tmp_path / which
    shutil.copytree(src, dst)
    (dst / gone).unlink()
    if which == "clip":
        (dst / "tokenizer_config.json").unlink()
    return dst


@pytest.mark.parametrize(
    ("case", "setting", "needle"),
    [
        ("sd unset", "deephiding.sig_sd_dir", "not set"),
        ("sd missing", "deephiding.sig_sd_dir", "does not exist"),
        ("sd-unet", "deephiding.sig_sd_dir", "weights in unet/"),
        ("sd-index", "deephiding.sig_sd_dir", "model_index.json"),
        ("cn unset", "deephiding.sig_controlnet_dir", "not set"),
        ("cn", "deephiding.sig_controlnet_dir", "config.json"),
        ("clip", "deephiding.sig_text_encoder_dir", "tokenizer"),
        ("prompts", "deephiding.sig_prompts", "prompt corpus"),
        ("deephiding-s", "deephiding-s.sig_sd_dir", "not set"),
    ],
)
def test_preflight_names_the_parameter_to_set(tmp_path, tiny_weights, case, setting, needle):
    sd, cn, clip = tiny_weights
    params = {
        "sig_sd_dir": str(sd),
        "sig_controlnet_dir": str(cn),
        "sig_text_encoder_dir": str(clip),
    }
    name = "deephiding"
    if case == "sd unset":
        params.pop("sig_sd_dir")
    elif case == "sd missing":
        params["sig_sd_dir"] = str(tmp_path / "nope")
    elif case in ("sd-unet", "sd-index"):
        params["sig_sd_dir"] = str(_broken(tmp_path, tiny_weights, case))
    elif case == "cn unset":
        params["sig_controlnet_dir"] = ""
    elif case == "cn":
        params["sig_controlnet_dir"] = str(_broken(tmp_path, tiny_weights, "cn"))
    elif case == "clip":
        params["sig_text_encoder_dir"] = str(_broken(tmp_path, tiny_weights, "clip"))
    elif case == "prompts":
        params["sig_prompts"] = str(tmp_path / "no-corpus.txt")
    else:
        name = case
        params.pop("sig_sd_dir")
    with pytest.raises(ConfigError) as err:
        _deephiding(name, **params).preflight()
    line = err.value.line()
    assert setting in line and needle in line and "\n" not in line


def test_preflight_passes_complete_folders_and_skips_unused_ones(tiny_weights):
    sd, cn, clip = tiny_weights
    _deephiding(
        sig_sd_dir=str(sd), sig_controlnet_dir=str(cn), sig_text_encoder_dir=str(clip)
    ).preflight()
    _deephiding(sig_sd_dir=str(sd), sig_controlnet_dir=str(cn)).preflight()  # TPC with MiniLM
    _deephiding(hidden="next-class").preflight()  # no SIG bank: its folders are not needed
    _deephiding(sig_backend="offline").preflight()  # the offline backend needs no weights


@pytest.mark.parametrize(
    ("which", "flag"),
    [
        ("sd_none", "--sd-model"),
        ("sd_missing", "--sd-model"),
        ("sd_empty", "--sd-model"),
        ("cn_missing", "--controlnet"),
    ],
)
def test_missing_weights_folder_names_the_flag(run_context, tmp_path, tiny_weights, which, flag):
    from ueb_sig import load_or_build_bank

    (tmp_path / "empty").mkdir()
    sd = {
        "sd_none": None,
        "sd_missing": str(tmp_path / "nope"),
        "sd_empty": str(tmp_path / "empty"),
    }.get(which, str(tiny_weights[0]))
    with pytest.raises(ConfigError) as err:
        load_or_build_bank(
            run_context,
            2,
            2,
            16,
            backend="diffusers",
            sd_model=sd,
            controlnet=str(tmp_path / "nope-cn"),
        )
    line = err.value.line()
    assert flag in line and "\n" not in line


def test_missing_weights_command_exits_with_one_line(tmp_path):
    import typer
    from typer.testing import CliRunner
    from ueb_sig.cli import add_commands

    app = typer.Typer()
    add_commands(app)
    r = CliRunner().invoke(
        app,
        [
            "semantic-images",
            "--backend",
            "diffusers",
            "--out",
            str(tmp_path / "b"),
            "--controlnet",
            str(tmp_path),
            "--cache",
            str(tmp_path / "c"),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 2
    assert "--sd-model" in r.output and len(r.output.strip().splitlines()) == 1


# --------------------------------------------------------------------------- through `ueb run`


def _run_args(run_dir, *params):
    args = [
        "run",
        "-p",
        "deephiding",
        "--profile",
        "smoke",
        "--device",
        "cpu",
        "--run-dir",
        str(run_dir),
        "-q",
        "--param",
        "deephiding.hidden=sig",
        "--param",
        "deephiding.sig_backend=diffusers",
    ]
    for p in params:
        args += ["--param", f"deephiding.{p}"]
    return args


def test_deephiding_run_generates_its_hidden_images_with_diffusion(tmp_path, tiny_weights):
    from core_helpers import run_cli

    from ueb.store import Store

    sd, cn, clip = tiny_weights
    cache = tmp_path / "cache"
    r = run_cli(
        *_run_args(
            tmp_path / "run",
            f"sig_sd_dir={sd}",
            f"sig_controlnet_dir={cn}",
            f"sig_text_encoder_dir={clip}",
            "sig_steps=2",
            "sig_gen_size=32",
            "sig_batch_size=3",
        ),
        "--no-clean",
        env={"UEB_CACHE": str(cache)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    store = Store.open_existing(tmp_path / "run")
    (record,) = [x for x in store.records() if x.poisoner == "deephiding"]
    store.close()
    assert record.status == "ok", record
    facts = record.poison_facts
    hidden = facts["hidden_facts"]
    assert (
        facts["hidden_source"] == "sig"
        and hidden["backend"] == "diffusers"
        and hidden["per_class"] == 3
    )
    assert hidden["encoder"].startswith("clip:") and "ControlNet" in hidden["generator"]
    assert set(hidden["weights"]) == {"stable_diffusion", "controlnet"}
    assert hidden["weight_paths"]["stable_diffusion"] == str(sd.resolve())
    (bank_dir,) = [p for p in (cache / "sig-bank").iterdir() if p.is_dir()]
    recipe = json.loads((bank_dir / "recipe.json").read_text())
    assert (
        recipe["backend"] == "diffusers"
        and recipe["options"]["steps"] == 2
        and recipe["options"]["gen_size"] == 32
    )
    assert recipe["weights"] == hidden["weights"] and recipe["shape"][:2] == [10, 3]


def test_deephiding_run_without_weights_stops_before_any_work(tmp_path, tiny_weights):
    from core_helpers import run_cli

    from ueb.store import Store

    _, cn, _ = tiny_weights
    cache = tmp_path / "cache"
    r = run_cli(
        *_run_args(tmp_path / "run", f"sig_controlnet_dir={cn}"),
        env={"UEB_CACHE": str(cache)},
        timeout=120,
    )
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "deephiding.sig_sd_dir" in r.stderr and "Traceback" not in r.stderr
    # Nothing computed: not the clean reference cell, not a poison, not an artifact.
    if (tmp_path / "run" / "results.sqlite").exists():
        store = Store.open_existing(tmp_path / "run")
        assert store.records() == []
        store.close()
    assert [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock"] == []
