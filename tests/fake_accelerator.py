"""A stand-in accelerator on the CPU, to check device handling without a GPU.

Inside :func:`fake_accelerator`, ``torch.device("meta")`` plays a GPU: a
tensor created on it or moved to it (``.to("meta")``, ``device="meta"``,
``module.to("meta")``) is an ordinary CPU tensor that is *tagged*, and
every result of an operation on a tagged tensor is tagged too.  The rules
CUDA enforces are enforced on tagged tensors:

- ``.device`` says ``meta``, so code that follows its inputs' device
  creates tagged tensors;
- an operation that mixes a tagged tensor with an untagged CPU tensor of
  one or more dimensions fails, as CUDA's "expected all tensors to be on
  the same device" does (0-d CPU tensors and indexing a tagged tensor with
  CPU indices are allowed, as on CUDA);
- ``.numpy()`` of a tagged tensor fails; ``.cpu()`` gives an untagged copy.

The numbers are computed on the CPU, so a run on the fake accelerator must
give the CPU run's results.  What it cannot check: speed, CUDA kernels'
own numerics, and code paths that branch on ``device.type == "cuda"``.
``torch.func`` transforms build their tensors in C++; their outputs are
tagged when an input was (see :func:`_tag_outputs`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import weakref

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

FAKE = torch.device("meta")
_tagged: dict[int, weakref.ref] = {}


class DeviceMismatch(RuntimeError):
    """A fake-accelerator tensor met a CPU tensor, as CUDA would refuse."""


def tag(value):
    """Mark ``value`` (if a tensor) as living on the fake accelerator."""
    if isinstance(value, torch.Tensor):
        key = id(value)
        _tagged[key] = weakref.ref(value, lambda _ref, k=key: _tagged.pop(k, None))
    return value


def on_fake(value) -> bool:
    """Whether ``value`` is a tensor on the fake accelerator."""
    ref = _tagged.get(id(value))
    return ref is not None and ref() is value


def _is_fake(device) -> bool:
    return (
        isinstance(device, str | torch.device)
        and torch.device(device).type == FAKE.type
    )


def _is_host(device) -> bool:
    return isinstance(device, str | torch.device) and torch.device(device).type == "cpu"


class _FakeAccelerator(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        owner = getattr(getattr(func, "__self__", None), "__name__", None)
        tensors = [
            a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)
        ]
        remote = any(on_fake(t) for t in tensors)
        if name == "__get__" and owner == "device":
            return FAKE if remote else func(*args, **kwargs)
        if name == "__get__" and owner == "is_cpu":
            return not remote and func(*args, **kwargs)
        if name == "__set__" and owner == "data":
            func(*args, **kwargs)
            if on_fake(args[1]):
                tag(args[0])
            return None
        if name == "_has_compatible_shallow_copy_type":
            return func(*args, **kwargs)
        if name == "numpy" and remote:
            raise TypeError(
                "can't convert a fake-accelerator tensor to numpy; call .cpu() first"
            )
        if name == "cpu":
            out = func(*args, **kwargs)
            return out.clone() if remote and out is args[0] else out
        to_fake = "device" in kwargs and _is_fake(kwargs["device"])
        if to_fake:
            kwargs["device"] = "cpu"
        if name == "to":
            to_host = any(_is_host(a) for a in args[1:]) or _is_host(
                kwargs.get("device")
            )
            to_fake = to_fake or any(_is_fake(a) for a in args[1:])
            args = tuple("cpu" if _is_fake(a) else a for a in args)
            out = func(*args, **kwargs)
            if to_fake or (remote and not to_host):
                return tag(out.clone() if out is args[0] and not remote else out)
            return out.clone() if remote and out is args[0] else out
        if remote:
            _check_same_device(name, args, tensors)
        out = func(*args, **kwargs)
        if remote or to_fake:
            tree_map(tag, out)
        return out


def _check_same_device(name: str, args, tensors) -> None:
    """Raise where CUDA would: a tagged tensor meets a CPU tensor of >= 1 dim."""
    host = [t for t in tensors if not on_fake(t) and t.ndim > 0]
    if name == "__setitem__" and not on_fake(args[0]):
        raise DeviceMismatch("a CPU tensor assigned from fake-accelerator tensors")
    if host and name not in ("__getitem__", "__setitem__"):
        shapes = [tuple(t.shape) for t in host]
        raise DeviceMismatch(
            f"{name}: fake-accelerator tensors mixed with CPU tensors {shapes}"
        )


def _tag_outputs(function):
    """``function`` whose tensor outputs are tagged when an input was; a
    function returned (``grad(f)``, ``vmap(f)``) is wrapped the same way."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        out = function(*args, **kwargs)
        if callable(out) and not isinstance(out, torch.Tensor):
            return _tag_outputs(out)
        inputs = tree_flatten((args, kwargs))[0]
        if any(on_fake(t) for t in inputs):
            tree_map(tag, out)
        return out

    return wrapped


class _Generator:
    """``torch.Generator`` that builds a CPU generator for the fake device."""

    def __new__(cls, device="cpu"):
        return _REAL["Generator"](device="cpu" if _is_fake(device) else device)


def _autocast(device_type, *args, **kwargs):
    host = "cpu" if device_type == FAKE.type else device_type
    return _REAL["autocast"](host, *args, **kwargs)


def _is_autocast_enabled(*args):
    args = ("cpu",) if args and args[0] == FAKE.type else args
    return _REAL["is_autocast_enabled"](*args)


def _get_autocast_dtype(device_type):
    host = "cpu" if device_type == FAKE.type else device_type
    return _REAL["get_autocast_dtype"](host)


def _parameter(cls, data=None, requires_grad=True):
    """``nn.Parameter`` of a tagged tensor is tagged (built in C++ otherwise)."""
    made = _REAL["Parameter.__new__"](cls, data, requires_grad)
    return tag(made) if data is not None and on_fake(data) else made


_REAL = {
    "Parameter.__new__": torch.nn.Parameter.__new__,
    "Generator": torch.Generator,
    "autocast": torch.autocast,
    "is_autocast_enabled": torch.is_autocast_enabled,
    "get_autocast_dtype": torch.get_autocast_dtype,
}
_STAND_INS = {
    "Generator": _Generator,
    "autocast": _autocast,
    "is_autocast_enabled": _is_autocast_enabled,
    "get_autocast_dtype": _get_autocast_dtype,
}
_TRANSFORMS = ("jvp", "grad", "vmap", "functional_call", "vjp")


@contextlib.contextmanager
def fake_accelerator(monkeypatch):
    """Inside the block, ``"meta"`` is a fake accelerator (see the module doc);
    ``monkeypatch`` (pytest's) undoes the stand-ins afterwards."""
    for attr, stand_in in _STAND_INS.items():
        monkeypatch.setattr(torch, attr, stand_in)
    monkeypatch.setattr(torch.nn.Parameter, "__new__", _parameter)
    for attr in _TRANSFORMS:
        original = getattr(torch.func, attr)
        wrapped = _tag_outputs(original)
        monkeypatch.setattr(torch.func, attr, wrapped)
        for module in list(sys.modules.values()):
            name = getattr(module, "__name__", "")
            if (
                name.split(".")[0] != "torch"
                and getattr(module, attr, None) is original
            ):
                monkeypatch.setattr(module, attr, wrapped)
    # CUDA has fused optimizer kernels (Adam(fused=True)); so does the stand-in
    import torch.optim.optimizer as optimizer

    supported = optimizer._get_fused_kernels_supported_devices
    monkeypatch.setattr(
        optimizer,
        "_get_fused_kernels_supported_devices",
        lambda: [*supported(), FAKE.type],
    )
    with _FakeAccelerator():
        yield FAKE
