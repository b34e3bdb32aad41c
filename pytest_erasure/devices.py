"""One GPU per xdist worker, taken from the caller's CUDA_VISIBLE_DEVICES list by worker index.

Pinning happens in the worker before torch initialises CUDA (the plugin imports no torch at
load time), so each worker sees exactly one device, `cuda:0`, and never one outside the list.
"""

from __future__ import annotations

import os

from pytest_erasure.errors import ErasureInputError

VISIBLE = "CUDA_VISIBLE_DEVICES"
DTYPES = ("float32", "float16", "bfloat16")
"""The model dtypes an audit runs in (`--dtype`): here, on the ground floor, because the options
table and the loader both read them and the loader must not import the options table."""


def visible_devices(environ: dict[str, str] | None = None) -> list[str] | None:
    """The caller's device list, or None when unrestricted."""
    value = (os.environ if environ is None else environ).get(VISIBLE)
    if value is None:
        return None
    return [d.strip() for d in value.split(",") if d.strip()]


def check_worker_count(workers: int, device: str, environ: dict[str, str] | None = None) -> None:
    """More workers than listed GPUs would put two workers on one device: refuse up front."""
    if not device.startswith("cuda") or workers <= 1:
        return
    devices = visible_devices(environ)
    if devices is not None and workers > len(devices):
        raise ErasureInputError(
            f"-n {workers}", f"asks for more workers than the {len(devices)} device(s) in "
            f"{VISIBLE}={','.join(devices)}", f"use -n {len(devices)} or list more devices")


def worker_device(workerid: str, environ: dict[str, str] | None = None) -> str | None:
    """The device id worker `gwN` is pinned to (None: no list to take from)."""
    devices = visible_devices(environ)
    if not devices:
        return None
    index = int(workerid.removeprefix("gw"))
    if index >= len(devices):
        raise ErasureInputError(f"xdist worker {workerid}", f"has no device in {VISIBLE}="
                                f"{','.join(devices)}", f"use -n {len(devices)} or fewer")
    return devices[index]


def pin_worker(workerid: str, device: str) -> None:
    if device.split(":")[0] != "cuda":
        return
    chosen = worker_device(workerid)
    if chosen is not None:
        os.environ[VISIBLE] = chosen
