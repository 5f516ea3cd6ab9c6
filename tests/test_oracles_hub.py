"""Hub change detection: same-size edits of inline files, deletion-only pushes.

Against the loopback ``HubDouble``: a non-LFS file is unchanged only when its
git blob id matches, so an edit that keeps the size is uploaded; a push whose
only change is a deleted file still makes its commit.
"""

from __future__ import annotations

import hashlib

from hub_double import TOKEN
from test_hub import REPO, make_run

import sae_lens_ext.hub as hub
from sae_lens_ext.hub import push_to_hub


def same_size_edit(data: bytes) -> bytes:
    """``data`` with its last digit changed: the same length, other content."""
    for i in range(len(data) - 1, -1, -1):
        if data[i : i + 1].isdigit():
            digit = b"1" if data[i : i + 1] != b"1" else b"2"
            return data[:i] + digit + data[i + 1 :]
    raise AssertionError("no digit to edit")


def test_same_size_edit_of_an_inline_file_is_pushed(hub, tmp_path):
    run = make_run(tmp_path)
    first = push_to_hub(run, REPO, token=TOKEN)
    csv = run / "mdl" / "bits.csv"
    before = csv.read_bytes()
    csv.write_bytes(same_size_edit(before))
    assert len(csv.read_bytes()) == len(before) and csv.read_bytes() != before

    result = push_to_hub(run, REPO, token=TOKEN)

    assert not hub.repos[REPO].commits[first.commit].files["mdl/bits.csv"].lfs
    assert result.commit is not None and result.commit == hub.head(REPO)
    assert result.uploaded == ["mdl/bits.csv"] and result.deleted == []
    assert hub.files(REPO)["mdl/bits.csv"] == csv.read_bytes()
    assert hub.commit_count(REPO) == 3


def test_deletion_only_push_makes_its_commit(hub, tmp_path):
    run = make_run(tmp_path)
    first = push_to_hub(run, REPO, token=TOKEN)
    (run / "mdl" / "bits.csv").unlink()

    result = push_to_hub(run, REPO, token=TOKEN)

    assert result.uploaded == [] and result.deleted == ["mdl/bits.csv"]
    assert result.commit is not None and result.commit != first.commit
    assert hub.head(REPO) == result.commit and hub.commit_count(REPO) == 3
    assert "mdl/bits.csv" not in hub.files(REPO)
    assert "mdl/bits.parquet" in hub.files(REPO)


def test_a_needle_across_any_chunk_boundary_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "_CHUNK", 8)  # many boundaries in a short file
    needle = b"hf_abcdefghijk"  # 14 bytes: it straddles one or two boundaries
    path = tmp_path / "f.bin"
    for offset in range(20):
        data = b"x" * offset + needle + b"y" * 5
        path.write_bytes(data)
        entry, found = hub.hashed_file("f.bin", path, needle)
        assert found, offset
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
    path.write_bytes(b"x" * 9 + needle[:-1] + b"y" * 9)
    assert not hub.hashed_file("f.bin", path, needle)[1]
