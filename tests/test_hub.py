"""push_to_hub against a loopback double of the Hub, loaded back with SAE-Lens.

The real huggingface_hub client talks HTTP to ``HubDouble`` on 127.0.0.1.
huggingface_hub reads ``HF_ENDPOINT`` when it is imported, so the ``hub``
fixture points ``constants.ENDPOINT`` and the download URL template at the
double (``test_cli_push_in_subprocess`` uses the real ``HF_ENDPOINT`` in a
fresh process instead), turns offline mode off, disables Xet (the double
speaks LFS basic transfer) and keeps the cache and login in tmp_path.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hub_double import BOB_TOKEN, TOKEN, HubDouble

from sae_lens_ext.hub import PublishError, push_to_hub
from sae_lens_ext.model_card import render_model_card

REPO = "alice/gpt2-sae-analyses"
SAE_FOLDER = "meta_sae/meta_sae_32"
HOOK = "blocks.0.hook_resid_post"


def tiny_sae(seed: int = 0):
    """A TopK SAE-Lens SAE (d_in 16, d_sae 32) with metadata naming model and hook."""
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    cfg = TopKSAEConfig(d_in=16, d_sae=32, k=4)
    cfg.metadata.model_name = "gpt2"
    cfg.metadata.hook_name = HOOK
    sae = TopKSAE(cfg)
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.normal_()
        sae.b_enc.normal_()
    return sae


def make_run(root: Path, seed: int = 0) -> Path:
    """A run directory as the runner writes it: summary, card, table, plot, SAE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = root / f"run-{seed}"
    (run / "mdl").mkdir(parents=True)
    table = pd.DataFrame(
        {"latent": range(8), "bits": [0.5 * i + seed for i in range(8)]}
    )
    table.to_parquet(run / "mdl" / "bits.parquet", index=False)
    table.to_csv(run / "mdl" / "bits.csv", index=False)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot(table["latent"], table["bits"])
    fig.savefig(run / "mdl" / "bits.png", dpi=40)
    plt.close(fig)
    sae = tiny_sae(seed)
    sae.save_model(run / SAE_FOLDER)
    summary = {
        "sae_lens_ext_version": "0.1.0",
        "versions": {"sae-lens": "6.54.12"},
        "status": "complete",
        "release": "gpt2-small-res-jb",
        "sae_id": "blocks.0.hook_resid_pre",
        "model_name": "gpt2",
        "hook_name": HOOK,
        "dataset": "tiny",
        "n_tokens": 1024,
        "seed": seed,
        "device": "cpu",
        "plugins": ["mdl", "meta_sae"],
        "config": {"mdl": {"tolerance": 0.01}},
        "analyses": {
            "mdl": {
                "title": "MDL",
                "plugin": "mdl",
                "metrics": {"bits_per_token": 3.25},
                "files": ["mdl/bits.parquet", "mdl/bits.csv", "mdl/bits.png"],
                "saes": [],
            },
            "meta_sae": {
                "title": "Meta-SAE",
                "plugin": "meta_sae",
                "metrics": {"fvu": 0.125},
                "files": [
                    f"{SAE_FOLDER}/cfg.json",
                    f"{SAE_FOLDER}/sae_weights.safetensors",
                ],
                "saes": [SAE_FOLDER],
            },
        },
        "created": "2025-01-01T00:00:00+00:00",
        "duration_s": 1.0,
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    card = render_model_card(
        summary, [("MDL", "Bits per token."), ("Meta-SAE", "Meta.")]
    )
    (run / "README.md").write_text(card)
    return run


def expected_files(prefix: str = "") -> set[str]:
    """The repo paths a run from ``make_run`` lands at."""
    rel = [
        "README.md",
        "summary.json",
        "mdl/bits.parquet",
        "mdl/bits.csv",
        "mdl/bits.png",
        f"{SAE_FOLDER}/cfg.json",
        f"{SAE_FOLDER}/sae_weights.safetensors",
    ]
    return {f"{prefix}/{r}" if prefix else r for r in rel}


def test_push_then_load_back_with_sae_lens(hub, tmp_path, monkeypatch):
    from sae_lens import SAE

    run = make_run(tmp_path)
    result = push_to_hub(run, REPO, token=TOKEN)

    assert result.commit == hub.head(REPO)
    assert hub.commit_count(REPO) == 2  # the Hub's initial commit, then ours
    files = hub.files(REPO)
    assert set(files) == expected_files() | {".gitattributes"}
    # Binary files went through the LFS batch API, text ones inline.
    repo = hub.repos[REPO]
    stored = repo.commits[result.commit].files
    assert stored[f"{SAE_FOLDER}/sae_weights.safetensors"].lfs
    assert stored["mdl/bits.parquet"].lfs and not stored["summary.json"].lfs
    assert files["summary.json"] == (run / "summary.json").read_bytes()
    card = files["README.md"].decode()
    assert f'SAE.from_pretrained("{REPO}", "{SAE_FOLDER}")' in card
    assert "<repo_id>" not in card
    assert "<repo_id>" in (run / "README.md").read_text()  # the run dir is untouched
    assert str(result) == result.url == f"{hub.url}/{REPO}"

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    loaded = SAE.from_pretrained(REPO, SAE_FOLDER)
    original = tiny_sae(0)
    assert type(loaded).__name__ == "TopKSAE"
    assert loaded.cfg.metadata.hook_name == HOOK
    for name, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert ("HEAD", f"/{REPO}/resolve/main/{SAE_FOLDER}/cfg.json") in hub.requests


def test_identical_repush_makes_no_commit(hub, tmp_path):
    run = make_run(tmp_path)
    first = push_to_hub(run, REPO, token=TOKEN)
    hub.requests.clear()

    again = push_to_hub(run, REPO, token=TOKEN)

    assert again.commit is None
    assert hub.head(REPO) == first.commit and hub.commit_count(REPO) == 2
    assert sorted(again.unchanged) == sorted(expected_files())
    sent = [path for _, path in hub.requests]
    assert not any("/commit/" in p or "/preupload/" in p or "/_lfs" in p for p in sent)


def test_repush_replaces_only_this_runs_files(hub, tmp_path):
    run = make_run(tmp_path)
    push_to_hub(run, REPO, token=TOKEN)
    hub.commit_files(REPO, {"other-run/summary.json": b"{}"}, "another run")
    table = pd.DataFrame({"latent": [0], "bits": [9.0]})
    table.to_parquet(run / "mdl" / "bits.parquet", index=False)
    (run / "mdl" / "bits.png").unlink()
    lfs_puts_before = sum(m == "PUT" for m, _ in hub.requests)

    result = push_to_hub(run, REPO, token=TOKEN, commit_message="update tables")

    assert result.uploaded == ["mdl/bits.parquet"]
    assert result.deleted == ["mdl/bits.png"]
    assert hub.repos[REPO].commits[result.commit].message == "update tables"
    files = hub.files(REPO)
    assert "mdl/bits.png" not in files
    assert files["mdl/bits.parquet"] == (run / "mdl" / "bits.parquet").read_bytes()
    assert files["other-run/summary.json"] == b"{}"
    assert ".gitattributes" in files
    assert sum(m == "PUT" for m, _ in hub.requests) == lfs_puts_before + 1


def test_prefixes_keep_runs_apart(hub, tmp_path, monkeypatch):
    from sae_lens import SAE

    push_to_hub(make_run(tmp_path, seed=0), REPO, token=TOKEN, prefix="runs/a")
    root_card = hub.files(REPO)["README.md"]
    second = push_to_hub(
        make_run(tmp_path, seed=1), REPO, token=TOKEN, prefix="/runs/b/"
    )

    files = hub.files(REPO)
    assert expected_files("runs/a") | expected_files("runs/b") <= set(files)
    assert files["README.md"] == root_card  # the first run's card stays the repo's card
    assert f'"{REPO}", "runs/a/{SAE_FOLDER}"' in root_card.decode()
    assert f'"{REPO}", "runs/b/{SAE_FOLDER}"' in files["runs/b/README.md"].decode()
    assert second.url == f"{hub.url}/{REPO}/tree/main/runs/b"
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    loaded = SAE.from_pretrained(REPO, f"runs/b/{SAE_FOLDER}")
    assert torch.equal(loaded.W_enc, tiny_sae(1).W_enc)


def test_failure_mid_upload_leaves_repo_unchanged(hub, tmp_path):
    run = make_run(tmp_path)
    first = push_to_hub(run, REPO, token=TOKEN)
    before = hub.files(REPO)
    tiny_sae(5).save_model(run / SAE_FOLDER)  # new weights
    pd.DataFrame({"latent": [1], "bits": [2.0]}).to_parquet(
        run / "mdl" / "bits.parquet"
    )
    hub.fail_lfs_uploads_after = sum(m == "PUT" for m, _ in hub.requests) + 1

    with pytest.raises(PublishError) as caught:
        push_to_hub(run, REPO, token=TOKEN)

    message = str(caught.value)
    assert "Nothing was committed" in message and "repo is as it was" in message
    assert f"sae-lens-ext push {run} {REPO}" in message
    assert "403" in message and "write access" in message
    assert TOKEN not in message
    assert hub.head(REPO) == first.commit and hub.files(REPO) == before

    hub.fail_lfs_uploads_after = None
    puts = sum(m == "PUT" for m, _ in hub.requests)
    retried = push_to_hub(run, REPO, token=TOKEN)
    assert sorted(retried.uploaded) == [
        "mdl/bits.parquet",
        f"{SAE_FOLDER}/sae_weights.safetensors",
    ]
    # The object stored before the failure is not uploaded again.
    assert sum(m == "PUT" for m, _ in hub.requests) == puts + 1


def test_commit_failure_leaves_repo_unchanged(hub, tmp_path):
    run = make_run(tmp_path)
    hub.add_repo(REPO)
    head = hub.head(REPO)
    hub.fail_commits = True

    with pytest.raises(PublishError, match="server error") as caught:
        push_to_hub(run, REPO, token=TOKEN)

    assert "run the same push again" in str(caught.value)
    assert hub.head(REPO) == head and set(hub.files(REPO)) == {".gitattributes"}


def test_missing_token_fails_before_network(hub, tmp_path):
    run = make_run(tmp_path)
    with pytest.raises(PublishError, match="HF_TOKEN") as caught:
        push_to_hub(run, REPO)
    assert "hf auth login" in str(caught.value)
    assert hub.requests == []


def test_offline_mode_is_refused_before_network(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PublishError, match="unset HF_HUB_OFFLINE"):
        push_to_hub(make_run(tmp_path), REPO, token=TOKEN)
    assert hub.requests == []


@pytest.mark.parametrize("source", ["env", "login"])
def test_token_from_env_or_login(hub, tmp_path, monkeypatch, source):
    from huggingface_hub import constants

    if source == "env":
        monkeypatch.setenv("HF_TOKEN", TOKEN)
    else:
        Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True)
        Path(constants.HF_TOKEN_PATH).write_text(TOKEN)
    result = push_to_hub(make_run(tmp_path), REPO)
    assert result.commit == hub.head(REPO)


def test_wrong_namespace_is_refused_with_retry_advice(hub, tmp_path):
    with pytest.raises(PublishError, match="write access to 'alice'"):
        push_to_hub(make_run(tmp_path), REPO, token=BOB_TOKEN)
    assert REPO not in hub.repos


def test_private_repo(hub, tmp_path, monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError
    from sae_lens import SAE

    push_to_hub(make_run(tmp_path), REPO, token=TOKEN, private=True)
    assert hub.repos[REPO].private

    with pytest.raises(RepositoryNotFoundError):
        SAE.from_pretrained(REPO, SAE_FOLDER)  # anonymous: invisible
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert SAE.from_pretrained(REPO, SAE_FOLDER).cfg.d_sae == 32


def test_private_push_into_public_repo_is_refused(hub, tmp_path):
    hub.add_repo(REPO, private=False)
    head = hub.head(REPO)
    with pytest.raises(PublishError, match="is public"):
        push_to_hub(make_run(tmp_path), REPO, token=TOKEN, private=True)
    assert hub.head(REPO) == head


@pytest.mark.parametrize(
    "repo_id",
    [
        "no-namespace",
        "a/b/c",
        "alice/bad--name",
        "-alice/x",
        "alice/x.git",
        "",
        "alice/has space",
    ],
)
def test_malformed_repo_id_fails_before_network(hub, tmp_path, repo_id):
    with pytest.raises(ValueError, match="malformed repo id"):
        push_to_hub(tmp_path, repo_id, token=TOKEN)
    assert hub.requests == []


def test_bad_prefix_fails_before_network(hub, tmp_path):
    with pytest.raises(ValueError, match="bad prefix"):
        push_to_hub(make_run(tmp_path), REPO, token=TOKEN, prefix="runs/../escape")
    assert hub.requests == []


def test_refuses_pickle_and_other_files(hub, tmp_path):
    run = make_run(tmp_path)
    (run / "mdl" / "state.pkl").write_bytes(pickle.dumps({"a": 1}))
    (run / "notes.txt").write_text("hello")
    (run / "mdl" / "renamed.safetensors").write_bytes(pickle.dumps([1, 2, 3]))
    (run / "mdl" / "fake.png").write_bytes(b"not a png at all")

    with pytest.raises(ValueError, match="never pickle") as caught:
        push_to_hub(run, REPO, token=TOKEN)

    message = str(caught.value)
    for name in (
        "mdl/state.pkl",
        "notes.txt",
        "mdl/renamed.safetensors",
        "mdl/fake.png",
    ):
        assert name in message
    assert "mdl/bits.parquet" not in message
    assert hub.requests == []


def test_refuses_symlinks(hub, tmp_path):
    run = make_run(tmp_path)
    secret = tmp_path / "secret.md"
    secret.write_text("not part of the run")
    (run / "link.md").symlink_to(secret)
    with pytest.raises(ValueError, match="link.md .a symbolic link"):
        push_to_hub(run, REPO, token=TOKEN)


def test_sae_folder_must_load_back(hub, tmp_path):
    run = make_run(tmp_path)
    cfg_path = run / SAE_FOLDER / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["metadata"]["sae_lens_version"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="sae_lens_version"):
        push_to_hub(run, REPO, token=TOKEN)
    (run / SAE_FOLDER / "sae_weights.safetensors").unlink()
    with pytest.raises(ValueError, match="lacks sae_weights.safetensors"):
        push_to_hub(run, REPO, token=TOKEN)
    assert hub.requests == []


def test_running_run_is_refused(hub, tmp_path):
    run = make_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    with pytest.raises(ValueError, match="still running"):
        push_to_hub(run, REPO, token=TOKEN)


def test_token_never_logged_printed_or_written(hub, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    caplog.set_level(logging.DEBUG, logger="sae_lens_ext")
    run = make_run(tmp_path)
    push_to_hub(run, REPO, token=TOKEN)
    (run / "mdl" / "bits.csv").write_text("latent,bits\n0,1\n")
    hub.fail_commits = True
    with pytest.raises(PublishError) as caught:
        push_to_hub(run, REPO, token=TOKEN)
    hub.fail_commits = False
    push_to_hub(run, REPO, token=TOKEN, prefix="again")

    assert caplog.records, "logging was captured"
    out, err = capfd.readouterr()
    assert TOKEN not in caplog.text + out + err + str(caught.value)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not [p for p in written if TOKEN.encode() in p.read_bytes()]
    assert not [p for p, data in hub.files(REPO).items() if TOKEN.encode() in data]


def test_file_holding_the_token_is_refused(hub, tmp_path):
    run = make_run(tmp_path)
    (run / "mdl" / "notes.md").write_text(f"debug: token={TOKEN}\n")
    with pytest.raises(ValueError, match="contain your Hugging Face token") as caught:
        push_to_hub(run, REPO, token=TOKEN)
    assert "mdl/notes.md" in str(caught.value) and TOKEN not in str(caught.value)
    assert hub.requests == []


def test_push_to_a_new_branch(hub, tmp_path):
    run = make_run(tmp_path)
    push_to_hub(run, REPO, token=TOKEN)
    main_head = hub.head(REPO)
    (run / "mdl" / "bits.csv").write_text("latent,bits\n0,1\n")

    result = push_to_hub(run, REPO, token=TOKEN, revision="dev")

    assert hub.head(REPO) == main_head
    assert hub.head(REPO, "dev") == result.commit
    assert result.uploaded == ["mdl/bits.csv"]
    assert hub.files(REPO, "dev")["mdl/bits.csv"] == b"latent,bits\n0,1\n"
    assert result.url.endswith(f"{REPO}/tree/dev")


def test_cli_push_command(hub, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from sae_lens_ext.cli import cli

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = make_run(tmp_path)
    outcome = CliRunner().invoke(cli, ["push", str(run), REPO, "--prefix", "runs/x"])
    assert outcome.exit_code == 0, outcome.output
    assert f"{REPO}/tree/main/runs/x" in outcome.output
    assert expected_files("runs/x") <= set(hub.files(REPO))
    assert TOKEN not in outcome.output


def test_cli_push_in_subprocess(tmp_path):
    """The documented set-up: HF_ENDPOINT and HF_TOKEN in the environment."""
    with HubDouble({TOKEN: "alice"}) as double:
        run = make_run(tmp_path)
        env = {
            **os.environ,
            "HF_ENDPOINT": double.url,
            "HF_TOKEN": TOKEN,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
        }
        code = "from sae_lens_ext.cli import main; main()"
        done = subprocess.run(
            [sys.executable, "-c", code, "push", str(run), REPO],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert f"Pushed {run} to {double.url}/{REPO}" in done.stdout
        assert TOKEN not in done.stdout + done.stderr
        assert set(double.files(REPO)) == expected_files() | {".gitattributes"}


@pytest.mark.parametrize("status", ["failed", "interrupted"])
def test_incomplete_run_is_refused_unless_allowed(hub, tmp_path, status):
    run = make_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": status}))
    with pytest.raises(
        ValueError, match=f"the run is {status}, not complete"
    ) as caught:
        push_to_hub(run, REPO, token=TOKEN)
    assert "--allow-incomplete" in str(caught.value)
    assert hub.requests == []
    result = push_to_hub(run, REPO, token=TOKEN, allow_incomplete=True)
    assert result.commit == hub.head(REPO)
    assert expected_files() <= set(hub.files(REPO))


def test_cli_push_allow_incomplete(hub, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from sae_lens_ext.cli import cli

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = make_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    refused = CliRunner().invoke(cli, ["push", str(run), REPO])
    assert refused.exit_code != 0 and "--allow-incomplete" in str(refused.exception)
    assert hub.requests == []
    pushed = CliRunner().invoke(cli, ["push", str(run), REPO, "--allow-incomplete"])
    assert pushed.exit_code == 0, pushed.output
    assert f"Pushed {run} to {hub.url}/{REPO}" in pushed.output


def test_lost_commit_response_is_reported_as_made(hub, tmp_path, caplog):
    run = make_run(tmp_path)
    hub.add_repo(REPO)
    before = hub.head(REPO)
    hub.lose_commit_responses = True

    with caplog.at_level(logging.WARNING, logger="sae_lens_ext.hub"):
        result = push_to_hub(run, REPO, token=TOKEN)

    assert hub.head(REPO) != before and result.commit == hub.head(REPO)
    assert expected_files() <= set(hub.files(REPO))
    assert "the commit was made" in caplog.text
    assert hub.commit_count(REPO) == 2


def test_commit_by_someone_else_during_a_failed_commit_is_named(hub, tmp_path):
    run = make_run(tmp_path)
    hub.add_repo(REPO)
    hub.fail_commits = True
    original = hub.commit

    def commit_then_fail(user, repo, rev, body, **kw):
        hub.commit_files(REPO, {"other.md": b"someone else's"})
        return original(user, repo, rev, body, **kw)

    hub.commit = commit_then_fail
    with pytest.raises(PublishError, match="someone else committed"):
        push_to_hub(run, REPO, token=TOKEN)
