"""The data that crosses the sandbox: frames of JSON and safetensors, never pickles.

A frame is a header (a magic byte, the JSON length and the blob length, big endian),
a JSON object and a blob written by ``safetensors.torch.save``. JSON carries the
structure (names, strings, numbers, errors); the blob carries the tensors, which the
JSON names by key. Meta tensors have no data, so they travel as (shape, dtype)
descriptors and are rebuilt on the ``meta`` device.

Both ends use this module: the grader encodes ``Call``s and decodes ``Result``s; the
child does the opposite. The grader-side decoders treat their input as hostile: sizes
are bounded, every field is type-checked, dtypes and devices come from fixed lists,
and anything unexpected raises ``Malformed``, which costs the check being run and
nothing else.
"""

from __future__ import annotations

import json
import struct

import safetensors.torch
import torch

from .executor import Call, Callback, Module, OnDevice, Result

MAGIC = b"\xa7"
HEADER = struct.Struct(">cII")
MAX_JSON = 1 << 20  # bytes of JSON the grader accepts in one frame
MAX_BLOB = 1 << 28  # bytes of tensors the grader accepts in one frame
MAX_TEXT = 10_000  # characters in one string of a result
MAX_ITEMS = 10_000  # entries in one list or mapping of a result
MAX_DIMS = 16

DTYPES = {
    str(value).removeprefix("torch."): value
    for value in vars(torch).values()
    if isinstance(value, torch.dtype)
}


class Malformed(Exception):
    """Data from the child that is not what the grader expects."""


# Framing


def frame(meta: dict, tensors: dict[str, torch.Tensor] | None = None) -> bytes:
    payload = json.dumps(meta).encode()
    blob = safetensors.torch.save(tensors) if tensors else b""
    return HEADER.pack(MAGIC, len(payload), len(blob)) + payload + blob


class FrameReader:
    """Cut a byte stream into (JSON object, tensors) frames, within size bounds."""

    def __init__(self, max_json: int = MAX_JSON, max_blob: int = MAX_BLOB):
        self.max_json = max_json
        self.max_blob = max_blob
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def next(self) -> tuple[dict, dict[str, torch.Tensor]] | None:
        """The next complete frame, or None if more bytes are needed."""
        if len(self.buffer) < HEADER.size:
            return None
        magic, json_size, blob_size = HEADER.unpack_from(self.buffer)
        if magic != MAGIC or json_size > self.max_json or blob_size > self.max_blob:
            raise Malformed("a message with a bad header")
        end = HEADER.size + json_size + blob_size
        if len(self.buffer) < end:
            return None
        payload = bytes(self.buffer[HEADER.size : HEADER.size + json_size])
        blob = bytes(self.buffer[HEADER.size + json_size : end])
        del self.buffer[:end]
        return _parse_json(payload), _parse_blob(blob)


def _parse_json(payload: bytes) -> dict:
    try:
        meta = json.loads(payload.decode())
    except (ValueError, RecursionError) as error:
        raise Malformed("a message that is not valid JSON") from error
    if not isinstance(meta, dict):
        raise Malformed("a message that is not a JSON object")
    return meta


def _parse_blob(blob: bytes) -> dict[str, torch.Tensor]:
    if not blob:
        return {}
    try:
        return safetensors.torch.load(blob)
    except Exception as error:  # safetensors reports bad data in several ways
        raise Malformed("tensors that cannot be read") from error


# Tensors


class TensorPacker:
    """Collect the tensors of a message and give each a JSON reference."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def add(self, tensor: torch.Tensor) -> dict:
        dtype = str(tensor.dtype).removeprefix("torch.")
        if tensor.device.type == "meta":
            return {"meta": list(tensor.shape), "dtype": dtype}
        key = f"t{len(self.tensors)}"
        # An own, contiguous CPU copy: safetensors refuses views and shared storage.
        plain = tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        self.tensors[key] = plain
        return {"key": key, "device": str(tensor.device)}


def unpack_tensor(ref, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The tensor a reference names, rebuilt by the decoder as a plain torch.Tensor."""
    ref = _mapping(ref, "a tensor reference")
    if "meta" in ref:
        return torch.empty(_shape(ref["meta"]), dtype=_dtype(ref.get("dtype")), device="meta")
    tensor = tensors.get(_text(ref.get("key"), "a tensor key"))
    if type(tensor) is not torch.Tensor:
        raise Malformed("a reference to a missing tensor")
    return tensor.to(_device(ref.get("device")))


def _shape(value) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise Malformed("a bad shape")
    if not all(type(size) is int and 0 <= size < 1 << 40 for size in value):
        raise Malformed("a bad shape")
    return tuple(value)


def _dtype(name) -> torch.dtype:
    if not isinstance(name, str) or name not in DTYPES:
        raise Malformed("an unknown dtype")
    return DTYPES[name]


def _device(name) -> torch.device:
    if not isinstance(name, str) or len(name) > 20:
        raise Malformed("a bad device")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise Malformed("a bad device") from error
    if device.type not in ("cpu", "cuda"):
        raise Malformed("a bad device")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Malformed("a CUDA tensor on a machine without CUDA")
    return device


def _mapping(value, what: str) -> dict:
    if not isinstance(value, dict) or len(value) > MAX_ITEMS:
        raise Malformed(f"{what} that is not a mapping")
    return value


def _text(value, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise Malformed(f"{what} that is not a short string")
    return value


# Calls (grader to child; the child trusts them)


def encode_value(value, packer: TensorPacker):
    if isinstance(value, OnDevice):
        return {"on_device": {"tensor": packer.add(value.tensor), "device": value.device}}
    if isinstance(value, Callback):
        tensors = {name: packer.add(t) for name, t in value.tensors.items()}
        return {"callback": {"name": value.name, "kind": value.kind, "tensors": tensors}}
    if isinstance(value, torch.Tensor):
        return {"tensor": packer.add(value)}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, (tuple, list)):
        return {type(value).__name__: [encode_value(item, packer) for item in value]}
    if isinstance(value, dict):
        return {"dict": {str(k): encode_value(v, packer) for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"cannot send a {type(value).__name__} to the sandbox")


def decode_value(encoded: dict, tensors: dict[str, torch.Tensor]):
    ((kind, value),) = encoded.items()
    if kind == "on_device":
        return OnDevice(unpack_tensor(value["tensor"], tensors), value["device"])
    if kind == "callback":
        tensors_of = {name: unpack_tensor(ref, tensors) for name, ref in value["tensors"].items()}
        return Callback(value["name"], value["kind"], tensors_of)
    if kind == "tensor":
        return unpack_tensor(value, tensors)
    if kind == "dtype":
        return DTYPES[value]
    if kind in ("tuple", "list"):
        items = [decode_value(item, tensors) for item in value]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {k: decode_value(v, tensors) for k, v in value.items()}
    return value


def encode_call(call: Call, packer: TensorPacker) -> dict:
    module = call.module
    return {
        "function": call.function,
        "args": encode_value(tuple(call.args), packer),
        "kwargs": encode_value(dict(call.kwargs), packer),
        "module": None
        if module is None
        else {
            "init_args": encode_value(tuple(module.init_args), packer),
            "init_kwargs": encode_value(dict(module.init_kwargs), packer),
            "state_dict": encode_value(dict(module.state_dict), packer),
            "method": module.method,
        },
        "device": call.device,
        "dtype": None if call.dtype is None else str(call.dtype).removeprefix("torch."),
        "grad": call.grad,
        "seed": call.seed,
    }


def decode_call(meta: dict, tensors: dict[str, torch.Tensor]) -> Call:
    module = meta["module"]
    if module is not None:
        module = Module(
            init_args=decode_value(module["init_args"], tensors),
            init_kwargs=decode_value(module["init_kwargs"], tensors),
            state_dict=decode_value(module["state_dict"], tensors),
            method=module["method"],
        )
    return Call(
        function=meta["function"],
        args=decode_value(meta["args"], tensors),
        kwargs=decode_value(meta["kwargs"], tensors),
        module=module,
        device=meta["device"],
        dtype=None if meta["dtype"] is None else DTYPES[meta["dtype"]],
        grad=meta["grad"],
        seed=meta["seed"],
    )


# Results (child to grader; the grader trusts nothing)


def encode_result(result: Result, packer: TensorPacker) -> dict:
    def ref(tensor):
        return None if tensor is None else packer.add(tensor)

    return {
        "structure": result.structure,
        "outputs": [ref(t) for t in result.outputs],
        "grads": {name: ref(t) for name, t in result.grads.items()},
        "inputs_after": {name: ref(t) for name, t in result.inputs_after.items()},
        "error": result.error,
        "forbidden": list(result.forbidden),
        "calls": dict(result.calls),
        "recorded": {name: ref(t) for name, t in result.recorded.items()},
    }


def decode_result(meta, tensors: dict[str, torch.Tensor]) -> Result:
    meta = _mapping(meta, "a result")
    error = meta.get("error")

    def tensor_or_none(ref):
        return None if ref is None else unpack_tensor(ref, tensors)

    outputs = meta.get("outputs")
    forbidden = meta.get("forbidden")
    if not isinstance(outputs, list) or len(outputs) > MAX_ITEMS:
        raise Malformed("a result without a list of outputs")
    if not isinstance(forbidden, list) or len(forbidden) > MAX_ITEMS:
        raise Malformed("a result without a list of forbidden calls")
    grads = _mapping(meta.get("grads"), "gradients")
    inputs_after = _mapping(meta.get("inputs_after"), "inputs")
    calls = _mapping(meta.get("calls"), "call counts")
    recorded = _mapping(meta.get("recorded"), "recorded arguments")
    if not all(type(count) is int and 0 <= count < 1 << 31 for count in calls.values()):
        raise Malformed("a call count that is not a small integer")
    return Result(
        structure=_text(meta.get("structure"), "a structure"),
        outputs=[tensor_or_none(ref) for ref in outputs],
        grads={_text(k, "a name"): tensor_or_none(v) for k, v in grads.items()},
        inputs_after={
            _text(k, "a name"): unpack_tensor(v, tensors) for k, v in inputs_after.items()
        },
        error=None if error is None else _text(error, "an error"),
        forbidden=[_text(name, "a forbidden name") for name in forbidden],
        calls={_text(k, "a name"): count for k, count in calls.items()},
        recorded={_text(k, "a name"): unpack_tensor(v, tensors) for k, v in recorded.items()},
    )
