"""Token datasets for the shared pass: named, local files, or a release's own.

A dataset is given the way SAE-Lens names one (a Hugging Face dataset path,
used where the network allows) or as a local file: ``.safetensors`` with a
``tokens`` tensor ``[n_seq, context]``, or ``.txt`` text tokenized with the
model's tokenizer.  Every source yields batches of sequences ``[b, context]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch


class DatasetError(ValueError):
    """A dataset could not be read; the message says what to do."""


def iter_token_batches(
    tokens: torch.Tensor, batch_size: int, n_tokens: int
) -> Iterator[torch.Tensor]:
    """Yield ``[b, context]`` batches of ``tokens`` until ``n_tokens`` are used."""
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise DatasetError(
            f"token dataset must be a non-empty [n_seq, context] tensor, got shape "
            f"{tuple(tokens.shape)}"
        )
    n_seq = n_sequences_used(tokens, n_tokens)
    for start in range(0, n_seq, batch_size):
        yield tokens[start : min(start + batch_size, n_seq)].long()


def n_sequences_used(tokens: torch.Tensor, n_tokens: int) -> int:
    """How many leading sequences of ``tokens`` a pass over ``n_tokens`` uses."""
    return min(tokens.shape[0], max(1, -(-n_tokens // tokens.shape[1])))


def read_text_file(path: Path) -> str:
    """A text file's content; a non-UTF-8 file names the byte offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"--dataset {path} is not UTF-8 text: byte {data[exc.start]:#04x} at "
            f"offset {exc.start} cannot be decoded ({exc.reason}); convert the file "
            "to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from exc


def load_token_file(path: Path, tokenizer, context_size: int, prepend_bos: bool):
    """Read ``.safetensors`` token ids or tokenize a ``.txt`` file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.suffix == ".safetensors":
        try:
            tensors = load_file(path)
        except SafetensorError as exc:
            raise DatasetError(
                f"{path} is not a readable safetensors file ({exc})"
            ) from exc
        if "tokens" not in tensors:
            raise DatasetError(
                f"{path} has no 'tokens' tensor (found {sorted(tensors)}); save the "
                "token ids [n_seq, context] under the key 'tokens'."
            )
        return tensors["tokens"]
    if path.suffix in {".txt", ".md"}:
        return tokenize_text(read_text_file(path), tokenizer, context_size, prepend_bos)
    raise DatasetError(
        f"{path}: unsupported dataset file type {path.suffix!r}; use .safetensors "
        "(key 'tokens') or .txt"
    )


def tokenize_text(text: str, tokenizer, context_size: int, prepend_bos: bool):
    """Tokenize text and cut it into ``[n_seq, context_size]`` rows."""
    if tokenizer is None:
        raise DatasetError("a text dataset needs the model's tokenizer")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    body = context_size - 1 if prepend_bos else context_size
    n_seq = len(ids) // body
    if n_seq == 0:
        raise DatasetError(
            f"the text has {len(ids)} tokens, fewer than one context of {body}"
        )
    rows = torch.tensor(ids[: n_seq * body]).view(n_seq, body)
    if prepend_bos:
        bos = torch.full((n_seq, 1), tokenizer.bos_token_id)
        rows = torch.cat([bos, rows], dim=1)
    return rows


def load_hf_dataset(
    name: str, tokenizer, context_size: int, prepend_bos: bool, n_tokens
):
    """Stream a Hugging Face text dataset and tokenize enough of it."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets ships with sae-lens
        raise DatasetError(
            "reading a Hub dataset needs `pip install datasets`"
        ) from exc
    try:
        stream = datasets.load_dataset(name, split="train", streaming=True)
        column = "text"
        pieces, total = [], 0
        for row in stream:
            if column not in row:
                raise DatasetError(
                    f"dataset {name!r} has no 'text' column (columns: {sorted(row)})"
                )
            pieces.append(row[column])
            total += len(row[column]) // 3
            if total > n_tokens * 1.2:
                break
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(
            f"could not read dataset {name!r} from the Hugging Face Hub ({exc}). "
            "Offline, pass a local file instead: --dataset tokens.safetensors or text.txt"
        ) from exc
    return tokenize_text("\n\n".join(pieces), tokenizer, context_size, prepend_bos)
