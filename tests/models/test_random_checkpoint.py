"""Checkpoint specs against transformers' own models, and the streaming random-checkpoint writer."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

from tenk.errors import ConfigError
from tenk.models.checkpoint_specs import checkpoint_tensor_specs
from tenk.models.checkpoint_writer import (materialize, parse_size, plan_shards, write_random_checkpoint)
from tenk.models.presets import PRESETS, TINY_PRESETS, get_preset


def _read_dir(path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                assert k not in out, f"{k} is in two files"
                out[k] = sf.get_tensor(k)
    return out


def _on_disk_names(model) -> dict[str, torch.Tensor]:
    """transformers' in-memory state dict turned back into checkpoint names (what save_pretrained
    writes): transformers 5 stacks experts in memory but writes them one by one."""
    from transformers.core_model_loading import revert_weight_conversion

    sd = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # save_pretrained writes the tied table once
    return revert_weight_conversion(model, sd)


# ----------------------------------------------------------------------------- specs


@pytest.mark.parametrize("name", PRESETS)
def test_specs_match_transformers_meta_model(name):
    """Names and shapes for every preset, big ones cut to one layer (meta device: no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = get_preset(name, num_layers=None if name in TINY_PRESETS else 1)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf))
    theirs = {k: tuple(v.shape) for k, v in _on_disk_names(model).items()}
    ours = {s.name: s.shape for s in checkpoint_tensor_specs(hf)}
    assert sorted(set(ours) ^ set(theirs)) == []
    assert ours == theirs


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_specs_match_transformers_saved_file(name, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = get_preset(name)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf))
    model.save_pretrained(tmp_path)
    saved = _read_dir(tmp_path)
    specs = checkpoint_tensor_specs(hf)
    assert [s.name for s in specs] == list(dict.fromkeys(s.name for s in specs))  # no duplicates
    assert {s.name: s.shape for s in specs} == {k: tuple(v.shape) for k, v in saved.items()}


def test_specs_cover_layer_options():
    """Dense layers inside Qwen3-MoE, attention biases, and a tied lm_head."""
    from transformers import AutoConfig, AutoModelForCausalLM

    variants = [
        dict(get_preset("tiny-moe"), mlp_only_layers=[1]),
        dict(get_preset("tiny-moe", num_layers=4), decoder_sparse_step=2),
        dict(get_preset("tiny-qwen3"), attention_bias=True, tie_word_embeddings=True),
        dict(get_preset("tiny-llama"), attention_bias=True, mlp_bias=True, tie_word_embeddings=False),
    ]
    for hf in variants:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf))
        theirs = {k: tuple(v.shape) for k, v in _on_disk_names(model).items()}
        assert {s.name: s.shape for s in checkpoint_tensor_specs(hf)} == theirs


def test_unknown_model_type_is_a_config_error():
    with pytest.raises(ConfigError, match="model_type 'gpt2'"):
        checkpoint_tensor_specs({"model_type": "gpt2"})
    with pytest.raises(ConfigError, match="'hidden_size' is missing"):
        checkpoint_tensor_specs({"model_type": "llama", "vocab_size": 10})


# ----------------------------------------------------------------------------- writer


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_written_checkpoint_loads_in_transformers(name, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    written = write_random_checkpoint(get_preset(name), tmp_path, seed=7, max_shard_size="150KB")
    assert len(written.files) > 1
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.dtype == torch.bfloat16
    specs = {s.name: s for s in checkpoint_tensor_specs(get_preset(name))}
    loaded = _on_disk_names(model)
    assert set(loaded) == set(specs)
    for k, v in loaded.items():  # what transformers holds is exactly what was written
        want = materialize(specs[k], "bf16", seed=7)
        assert torch.equal(v.to(want.dtype), want), k
    emb = loaded["model.embed_tokens.weight"].float()
    assert 0.018 < emb.std().item() < 0.022 and abs(emb.mean().item()) < 2e-3
    # the whole directory works end to end: tokenizer, config ids, generation
    tok = AutoTokenizer.from_pretrained(tmp_path)
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 0] and tok.convert_ids_to_tokens(gen["eos_token_id"]) == ["<|im_end|>", "<|endoftext|>"]
    ids = tok("The river", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape == (1, ids.shape[1] + 4)


def test_minimax_bias_is_fp32_and_dtypes_follow_the_flag(tmp_path):
    for dtype, torch_dtype in (("fp16", torch.float16), ("fp32", torch.float32), ("bf16", torch.bfloat16)):
        out = tmp_path / dtype
        write_random_checkpoint(get_preset("tiny-minimax"), out, dtype=dtype)
        tensors = _read_dir(out)
        assert tensors["model.layers.0.self_attn.q_proj.weight"].dtype == torch_dtype
        bias = tensors["model.layers.1.block_sparse_moe.e_score_correction_bias"]
        assert bias.dtype == torch.float32 and bias.shape == (8,) and not bias.any()
        assert torch.equal(tensors["model.layers.0.self_attn.q_norm.weight"], torch.ones(64, dtype=torch_dtype))
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["torch_dtype"] == cfg["dtype"] == str(torch_dtype).removeprefix("torch.")


def test_sharding_and_index(tmp_path):
    hf = get_preset("tiny-moe")
    max_bytes = 40_000
    written = write_random_checkpoint(hf, tmp_path / "many", seed=3, max_shard_size=max_bytes)
    files = sorted(p.name for p in (tmp_path / "many").glob("*.safetensors"))
    n = len(files)
    assert n >= 5 and files == written.files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    specs = checkpoint_tensor_specs(hf)
    assert set(index["weight_map"]) == {s.name for s in specs}
    assert index["metadata"]["total_size"] == sum(s.numel for s in specs) * 2 == written.total_bytes
    for f in files:
        with safe_open(str(tmp_path / "many" / f), "pt") as sf:
            keys = set(sf.keys())
            assert keys == {k for k, v in index["weight_map"].items() if v == f}
            size = sum(sf.get_tensor(k).nbytes for k in keys)
            assert size <= max_bytes or len(keys) == 1
    # one file: no index, and the same values whatever the shard layout
    write_random_checkpoint(hf, tmp_path / "one", seed=3)
    assert sorted(p.name for p in (tmp_path / "one").iterdir() if p.suffix == ".safetensors") == ["model.safetensors"]
    assert not (tmp_path / "one" / "model.safetensors.index.json").exists()
    many, one = _read_dir(tmp_path / "many"), _read_dir(tmp_path / "one")
    assert many.keys() == one.keys() and all(torch.equal(many[k], one[k]) for k in one)
    # rewriting into the sharded directory replaces the old shards instead of mixing them in
    write_random_checkpoint(hf, tmp_path / "many", seed=4)
    assert sorted(p.name for p in (tmp_path / "many").glob("*.safetensors")) == ["model.safetensors"]
    assert not (tmp_path / "many" / "model.safetensors.index.json").exists()


def test_seed_controls_values_and_layers_do_not_shift_them(tmp_path):
    write_random_checkpoint(get_preset("tiny-llama"), tmp_path / "a", seed=1)
    write_random_checkpoint(get_preset("tiny-llama"), tmp_path / "b", seed=1)
    write_random_checkpoint(get_preset("tiny-llama"), tmp_path / "c", seed=2)
    write_random_checkpoint(get_preset("tiny-llama", num_layers=1), tmp_path / "d", seed=1)
    a, b, c, d = (_read_dir(tmp_path / x) for x in "abcd")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    assert set(d) < set(a) and all(torch.equal(a[k], d[k]) for k in d)


def test_plan_shards_and_sizes():
    specs = checkpoint_tensor_specs(get_preset("tiny-llama"))
    shards = plan_shards(specs, "bfloat16", 10)  # smaller than any tensor: one tensor per shard
    assert [len(s.specs) for s in shards] == [1] * len(specs)
    assert parse_size("5GB") == 5 * 10**9 and parse_size("512MiB") == 512 * 2**20 and parse_size("1.5 kb") == 1500
    for bad in ("5XB", "", "-1GB", "0"):
        with pytest.raises(ConfigError):
            parse_size(bad)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
def test_writer_memory_stays_bounded(tmp_path):
    """A ~300 MB checkpoint, 128 MB tensors, 50 MB shards: peak RSS grows by far less than one tensor."""
    script = textwrap.dedent(f"""
        import json, sys
        import torch
        from tenk.models.checkpoint_writer import write_random_checkpoint
        from tenk.models.presets import get_preset
        cfg = dict(get_preset("tiny-llama"), vocab_size=65536, hidden_size=1024, num_attention_heads=8,
                   num_key_value_heads=8, head_dim=128, intermediate_size=2816, tie_word_embeddings=False)
        write_random_checkpoint(get_preset("tiny-llama"), {str(tmp_path / "warm")!r})  # warm up imports
        def status_kb(field):
            for line in open("/proc/self/status"):
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
        base = status_kb("VmRSS")
        w = write_random_checkpoint(cfg, {str(tmp_path / "big")!r}, max_shard_size="50MB", tokenizer_vocab=512)
        peak = status_kb("VmHWM")
        print(json.dumps(dict(base_kb=base, peak_kb=peak, bytes=w.total_bytes, files=len(w.files))))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["bytes"] > 280e6 and r["files"] >= 4
    growth = (r["peak_kb"] - r["base_kb"]) * 1024
    print(f"RSS growth {growth / 1e6:.1f} MB for {r['bytes'] / 1e6:.0f} MB written")
    assert growth < 48e6, f"RSS grew by {growth / 1e6:.0f} MB writing {r['bytes'] / 1e6:.0f} MB"


# ----------------------------------------------------------------------------- CLI


def test_cli_writes_and_refuses_user_mistakes(tmp_path):
    from typer.testing import CliRunner

    from tenk.cli.main import app

    runner = CliRunner()
    out = tmp_path / "ckpt"
    res = runner.invoke(app, ["random-checkpoint", "tiny-minimax", str(out), "--num-layers", "1",
                              "--max-shard-size", "100KB", "--seed", "5"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1 and cfg["model_type"] == "minimax_m2"
    assert (out / "model.safetensors.index.json").is_file() and (out / "tokenizer.json").is_file()

    cases = [
        (["random-checkpoint", "tiny-minimax", str(out)], "not empty"),
        (["random-checkpoint", "gpt-5", str(tmp_path / "x")], "unknown preset 'gpt-5'"),
        (["random-checkpoint", "tiny-moe", str(tmp_path / "x"), "--dtype", "fp8"], "dtype 'fp8'"),
        (["random-checkpoint", "tiny-moe", str(tmp_path / "x"), "--tokenizer-vocab", "4096"], "larger than the model's vocab_size 512"),
        (["random-checkpoint", "tiny-moe", str(tmp_path / "x"), "--max-shard-size", "lots"], "cannot read size 'lots'"),
    ]
    for args, message in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 1, res.output
        assert message in " ".join(res.output.split()) and "Traceback" not in res.output
        assert not (tmp_path / "x").exists()  # refused before writing anything

    res = runner.invoke(app, ["random-checkpoint", "tiny-minimax", str(out), "--force", "--seed", "6"])
    assert res.exit_code == 0, res.output
    assert not (out / "model.safetensors.index.json").exists()  # the old shards are gone
