"""Activations stored on disk as arrays: one source of rows, ``[n_rows, d_in]``, opened lazily.

Reads a ``.npy`` file (memory-mapped), a ``.safetensors`` file (memory-mapped through its
header), a ``.pt``/``.pth`` file (``torch.load(mmap=True)``), a folder of such shards (rows
concatenated in natural name order), or a ``datasets`` folder written by SAELens's
``CacheActivationsRunner``. :mod:`softsae_lens.data.batches` serves the rows to training.

Arrays with more than two dimensions are read as rows of their last dimension (``[n, ctx, d]``
gives ``n * ctx`` rows), which is also how a cached-activations dataset's ``[ctx, d]`` cells
are read. Only the rows a batch needs are read from disk.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["SUFFIXES", "ActivationRows", "bad_argument", "open_activations"]

SUFFIXES = (".npy", ".safetensors", ".pt", ".pth")
_ALLOWED = (
    f"one of {', '.join(SUFFIXES)}, a folder of such files, or a datasets folder written by "
    "sae_lens's CacheActivationsRunner"
)
# safetensors dtype names -> numpy dtypes. bfloat16 has no numpy dtype: its bits are read as
# uint16 and reinterpreted by torch.
_SAFETENSORS_FLOATS = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": np.uint16}


def bad_argument(argument: str, value: Any, allowed: str) -> ValueError:
    """The ValueError for ``argument=value``, saying what is allowed."""
    return ValueError(f"{argument}={value!s}: {allowed}")


class ActivationRows:
    """Rows of activations on disk, read on demand.

    Attributes:
        source: where the rows come from (a path, for messages).
        n_rows: number of rows.
        d_in: width of a row.
        dtype: the stored dtype (a floating torch dtype).
    """

    source: str
    n_rows: int
    d_in: int
    dtype: torch.dtype

    def rows(self, indices: np.ndarray) -> torch.Tensor:
        """Rows at ``indices`` (sorted, unique, int64) as a ``[len(indices), d_in]`` tensor."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, n_rows={self.n_rows}, d_in={self.d_in}, dtype={self.dtype})"


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _rows_and_width(shape: Sequence[int], source: str, argument: str) -> tuple[int, int]:
    if len(shape) < 2:
        raise bad_argument(
            argument,
            source,
            f"activations must have at least 2 dimensions ([n_rows, d_in]), got shape {tuple(shape)}",
        )
    n_rows, d_in = math.prod(shape[:-1]), int(shape[-1])
    if n_rows == 0 or d_in == 0:
        raise bad_argument(argument, source, f"activations are empty (shape {tuple(shape)})")
    return n_rows, d_in


class _NumpyRows(ActivationRows):
    """A (memory-mapped) numpy array; ``bf16`` marks uint16 bits holding bfloat16."""

    def __init__(self, array: np.ndarray, source: str, argument: str, bf16: bool = False):
        self.n_rows, self.d_in = _rows_and_width(array.shape, source, argument)
        self.array = array.reshape(self.n_rows, self.d_in)
        self.source, self.bf16 = source, bf16
        self.dtype = torch.bfloat16 if bf16 else _torch_dtype(self.array.dtype)

    def rows(self, indices: np.ndarray) -> torch.Tensor:
        out = torch.from_numpy(np.ascontiguousarray(self.array[indices]))
        return out.view(torch.bfloat16) if self.bf16 else out


class _TorchRows(ActivationRows):
    def __init__(self, tensor: torch.Tensor, source: str, argument: str):
        self.n_rows, self.d_in = _rows_and_width(tensor.shape, source, argument)
        self.tensor = tensor.reshape(self.n_rows, self.d_in)
        self.source, self.dtype = source, tensor.dtype

    def rows(self, indices: np.ndarray) -> torch.Tensor:
        return self.tensor[torch.from_numpy(indices)]


class _DatasetRows(ActivationRows):
    """A ``datasets.Dataset`` column whose cells are ``[ctx, d_in]`` (CacheActivationsRunner)."""

    def __init__(self, dataset: Any, column: str, source: str, argument: str):
        first = np.asarray(dataset.with_format("numpy")[0][column])
        if first.ndim not in (1, 2):
            raise bad_argument(
                argument,
                source,
                f"column {column!r} must hold [d_in] or [ctx, d_in] cells, got a cell of shape {first.shape}",
            )
        self.per_cell = 1 if first.ndim == 1 else first.shape[0]
        self.n_rows, self.d_in = _rows_and_width(
            (len(dataset), self.per_cell, first.shape[-1]), source, argument
        )
        self.dataset = dataset.with_format("numpy", columns=[column])
        self.column, self.source = column, source
        self.dtype = _torch_dtype(first.dtype)
        _check_float(self.dtype, source, argument)

    def rows(self, indices: np.ndarray) -> torch.Tensor:
        cells, within = np.divmod(indices, self.per_cell)
        unique, inverse = np.unique(cells, return_inverse=True)
        block = np.asarray(self.dataset[unique.tolist()][self.column]).reshape(
            len(unique), self.per_cell, self.d_in
        )
        return torch.from_numpy(np.ascontiguousarray(block[inverse, within]))


class _ConcatRows(ActivationRows):
    def __init__(self, parts: list[ActivationRows], source: str):
        self.parts, self.source = parts, source
        self.offsets = np.cumsum([0] + [p.n_rows for p in parts])
        self.n_rows, self.d_in, self.dtype = int(self.offsets[-1]), parts[0].d_in, parts[0].dtype

    def rows(self, indices: np.ndarray) -> torch.Tensor:
        bounds = np.searchsorted(indices, self.offsets)
        pieces = [
            part.rows(indices[bounds[i] : bounds[i + 1]] - self.offsets[i])
            for i, part in enumerate(self.parts)
            if bounds[i] < bounds[i + 1]
        ]
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


def _check_float(dtype: Any, source: str, argument: str) -> None:
    is_float = dtype.is_floating_point if isinstance(dtype, torch.dtype) else dtype.kind == "f"
    if not is_float:
        raise bad_argument(
            argument,
            source,
            f"activations must be floating point (float16, bfloat16, float32 or float64), got dtype {dtype}",
        )


def _pick_key(keys: Sequence[str], key: str | None, source: str, argument: str) -> str:
    if key is not None:
        if key not in keys:
            raise bad_argument(
                f"{argument} key", key, f"not in {source}; its tensors are {sorted(keys)}"
            )
        return key
    if len(keys) != 1:
        raise bad_argument(
            argument,
            source,
            f"holds {len(keys)} tensors {sorted(keys)}; name one with key=... (--key on the command line)",
        )
    return keys[0]


def _open_npy(path: Path, argument: str) -> ActivationRows:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise bad_argument(argument, path, f"not a plain numeric .npy array ({err})") from err
    except (EOFError, OSError) as err:
        raise bad_argument(
            argument,
            path,
            f"not a readable .npy file (empty or truncated: {err or type(err).__name__})",
        ) from err
    _check_float(array.dtype, str(path), argument)
    return _NumpyRows(array, str(path), argument)


def _open_safetensors(path: Path, key: str | None, argument: str) -> ActivationRows:
    with path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(min(header_len, 100_000_000)))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            raise bad_argument(
                argument, path, "not a safetensors file (unreadable header)"
            ) from err
    header.pop("__metadata__", None)
    name = _pick_key(list(header), key, str(path), argument)
    entry = header[name]
    if entry["dtype"] not in _SAFETENSORS_FLOATS:
        raise bad_argument(
            argument,
            path,
            f"activations must be floating point (F16, BF16, F32 or F64), tensor {name!r} is {entry['dtype']}",
        )
    shape = tuple(entry["shape"])
    _rows_and_width(shape, str(path), argument)
    begin, _ = entry["data_offsets"]
    array = np.memmap(
        path,
        dtype=_SAFETENSORS_FLOATS[entry["dtype"]],
        mode="r",
        offset=8 + header_len + begin,
        shape=shape,
    )
    return _NumpyRows(array, f"{path}[{name}]", argument, bf16=entry["dtype"] == "BF16")


def _open_pt(path: Path, key: str | None, argument: str) -> ActivationRows:
    try:
        try:
            obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:
            # Files written by torch.save(_use_new_zipfile_serialization=False) cannot be mapped.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for a damaged file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise bad_argument(
            argument,
            path,
            f"not a readable .pt file written by torch.save (empty, truncated or damaged: {reason})",
        ) from err
    source = str(path)
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        name = _pick_key(list(tensors), key, source, argument)
        obj, source = tensors[name], f"{path}[{name}]"
    if not isinstance(obj, torch.Tensor):
        raise bad_argument(
            argument,
            path,
            f"a .pt file must hold a tensor or a dict of tensors, got {type(obj).__name__}",
        )
    _check_float(obj.dtype, source, argument)
    return _TorchRows(obj, source, argument)


def _open_dataset(path: Path, key: str | None, argument: str) -> ActivationRows:
    import datasets

    dataset = datasets.load_from_disk(str(path))
    if isinstance(dataset, datasets.DatasetDict):
        raise bad_argument(argument, path, "is a DatasetDict; pass the folder of one split")
    columns = [c for c in dataset.column_names if c != "token_ids"]
    column = _pick_key(columns, key, str(path), argument)
    return _DatasetRows(dataset, column, f"{path}[{column}]", argument)


def _natural_key(path: Path) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


def _open_file(path: Path, key: str | None, argument: str) -> ActivationRows:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if key is not None:
            raise bad_argument(
                f"{argument} key", key, "a .npy file holds one array; leave key unset"
            )
        return _open_npy(path, argument)
    if suffix == ".safetensors":
        return _open_safetensors(path, key, argument)
    if suffix in (".pt", ".pth"):
        return _open_pt(path, key, argument)
    raise bad_argument(
        argument, path, f"unsupported file type {path.suffix!r}; allowed: {_ALLOWED}"
    )


def open_activations(
    path: str | Path, key: str | None = None, argument: str = "activations"
) -> ActivationRows:
    """Open activation rows stored at ``path`` without reading them.

    Args:
        path: a ``.npy``, ``.safetensors`` or ``.pt``/``.pth`` file; a folder of such files
            (all read, in natural name order, as one run of rows; other files are ignored);
            or a ``datasets`` folder saved by ``CacheActivationsRunner`` (it has a
            ``state.json``).
        key: which tensor of a multi-tensor file (or dataset column, e.g. the hook name) to
            read; needed only when there is more than one.
        argument: the name used for ``path`` in error messages.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unsupported file type, a non-floating dtype, fewer than 2 dimensions,
            an empty array, an ambiguous or unknown ``key``, or shards of different widths.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{argument}={path}: no such file or folder")
    if path.is_file():
        return _open_file(path, key, argument)
    if (path / "state.json").exists() and (path / "dataset_info.json").exists():
        return _open_dataset(path, key, argument)
    shards = sorted(
        (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES),
        key=_natural_key,
    )
    if not shards:
        raise bad_argument(argument, path, f"folder holds no activation files; allowed: {_ALLOWED}")
    parts = [_open_file(shard, key, argument) for shard in shards]
    for part in parts[1:]:
        if part.d_in != parts[0].d_in:
            raise bad_argument(
                argument,
                path,
                f"shards differ in width: {parts[0].source} has d_in={parts[0].d_in}, {part.source} has d_in={part.d_in}",
            )
    return parts[0] if len(parts) == 1 else _ConcatRows(parts, str(path))
