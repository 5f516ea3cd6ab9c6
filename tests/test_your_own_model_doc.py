"""The worked example of docs/your-own-model.md runs as written, end to end.

A small Hugging Face Llama is built from a config and saved to a folder, an
SAE is trained on it with SAE-Lens, and ``sae-lens-ext run --model <folder>
--release <sae folder>`` runs through the command line.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sae_lens_ext.cli import build_cli

PAGE = Path(__file__).parent.parent / "docs" / "your-own-model.md"
HOOK = "blocks.0.hook_resid_post"
pytestmark = pytest.mark.slow  # ~25 s under load, mostly building the example


def worked_example() -> tuple[list[str], list[str]]:
    """The python blocks and the ``sae-lens-ext run`` line of the worked example."""
    section = PAGE.read_text().split("## Worked example", 1)[1]
    python = re.findall(r"```python\n(.*?)```", section, re.S)
    command = re.search(r"^\$ sae-lens-ext (run .*)$", section, re.M).group(1)
    return python, shlex.split(command)


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory):
    """A folder where the example's model and SAE blocks have run."""
    folder = tmp_path_factory.mktemp("own-model")
    blocks, _ = worked_example()
    before, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(folder)
    torch.set_num_threads(1)  # tiny tensors: one thread avoids contention
    try:
        for index, block in enumerate(blocks[:2]):
            exec(compile(block, f"{PAGE}:block{index}", "exec"), {})
    finally:
        os.chdir(before)
        torch.set_num_threads(threads)
    return folder


def test_the_llama_folder_converts_to_the_same_model(example_dir, one_thread):
    from transformers import AutoModelForCausalLM

    from sae_lens_ext import load_model

    model = load_model(str(example_dir / "tiny-llama"))
    reference = AutoModelForCausalLM.from_pretrained(example_dir / "tiny-llama")
    tokens = model.to_tokens("the red fox sat on the wall by the river.")
    assert tokens[0, 0] == model.tokenizer.bos_token_id
    with torch.no_grad():
        hf = reference(tokens, output_hidden_states=True)
        logits, cache = model.run_with_cache(tokens)
    assert model.cfg.original_architecture == "LlamaForCausalLM"
    assert model.cfg.n_key_value_heads == 2
    torch.testing.assert_close(logits, hf.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cache[HOOK], hf.hidden_states[1], atol=1e-5, rtol=1e-5)


def test_the_documented_command_runs_end_to_end(example_dir, monkeypatch, one_thread):
    _, args = worked_example()
    monkeypatch.chdir(example_dir)
    done = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    out = example_dir / args[args.index("--out") + 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["positions"] == "skip-bos" and summary["hook_name"] == HOOK
    base = summary["analyses"]["base"]["metrics"]
    assert base["explained_variance"] > 0.9  # a trained SAE, read where it was trained
    # near-perfect: within noise of the clean loss, far below zero-ablation
    assert 0.9 < base["ce_loss_recovered"] <= 1.01 and "ce_warning" not in base
    assert summary["analyses"]["mdl"]["metrics"]["bits_per_token"] > 0
    card = (out / "README.md").read_text()
    assert "tiny-llama-sae" in card and "(BOS excluded)" in card


def test_train_tokenized_takes_the_folder_as_model(
    example_dir, tmp_path, monkeypatch, one_thread
):
    args = ["train-tokenized", "--model", str(example_dir / "tiny-llama"),
            "--dataset", str(example_dir / "text.txt"), "--out", str(tmp_path / "t"),
            "--d-sae", "64", "--k", "4", "--steps", "10", "--batch-size", "64"]  # fmt: skip
    done = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    cfg = json.loads((tmp_path / "t" / "sae" / "cfg.json").read_text())
    recorded = cfg["metadata"]["model_name"]
    assert recorded == str((example_dir / "tiny-llama").resolve())
    monkeypatch.chdir(tmp_path)  # elsewhere: the recorded name still finds the folder
    from sae_lens_ext import load_model

    assert load_model(recorded).cfg.d_model == 64


def test_the_documented_python_call_runs(example_dir, monkeypatch, one_thread):
    blocks, _ = worked_example()
    monkeypatch.chdir(example_dir)
    namespace: dict = {}
    exec(compile(blocks[2], f"{PAGE}:api", "exec"), namespace)
    summary = namespace["out"].summary
    assert summary["status"] == "complete" and summary["model_name"] == "tiny-llama"
    assert summary["analyses"]["base"]["metrics"]["explained_variance"] > 0.9
