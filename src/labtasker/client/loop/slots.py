"""Slots: the parallel places where one loop runs its jobs (``--gpus``, ``--parallel``).

A *slot* is a worker of its own with a fixed set of GPUs (or none). ``--gpus 0,1,2,3`` makes
one slot per device; ``--gpus-per-task K`` makes slots of K devices (``0,1 | 2,3``);
``--parallel N`` makes N slots without devices. A slot's jobs run with

* ``CUDA_VISIBLE_DEVICES=<its devices>`` and ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (so the indices
  mean what ``nvidia-smi`` shows) -- GPU slots only;
* ``LABTASKER_SLOT=<slot index, 0-based>`` and ``LABTASKER_GPUS=<its devices, comma-separated;
  empty for CPU slots>``.

``--gpus all`` finds the machine's GPUs with NVML (``nvidia-ml-py``), falling back to
``nvidia-smi -L``; an already-set ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-<uuid>``) is the
allowed set, for ``all`` and for a listed ``--gpus 0,1`` alike (a listed device outside it is
refused).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from labtasker.client.loop.rundir import safe_name
from labtasker.exceptions import LabtaskerValueError

MAX_SLOTS = 256  # more slots than this in one loop is a typo, not a machine


# The name of every slot process starts with this (``multiprocessing`` names them).
SLOT_PROCESS_PREFIX = "labtasker-slot-"


@dataclass(frozen=True)
class Device:
    """One GPU: its ``index`` (PCI bus order, as ``nvidia-smi`` numbers it), and its UUID and
    name when they could be read."""

    index: int
    uuid: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Slot:
    """One slot: ``index`` (0-based), its ``devices`` (empty for a CPU slot) and its
    ``label`` (``gpu2``, ``gpu0-1``, ``slot3``) used in output prefixes and worker names."""

    index: int
    devices: tuple[Device, ...] = ()

    @property
    def label(self) -> str:
        if not self.devices:
            return f"slot{self.index}"
        return "gpu" + "-".join(str(d.index) for d in self.devices)

    @property
    def gpus(self) -> str:
        """The slot's device indices, comma-separated (empty for a CPU slot)."""
        return ",".join(str(d.index) for d in self.devices)

    def env(self) -> dict[str, str]:
        """Variables every job of this slot gets."""
        env = {"LABTASKER_SLOT": str(self.index), "LABTASKER_GPUS": self.gpus}
        if self.devices:
            env.update(CUDA_VISIBLE_DEVICES=self.gpus, CUDA_DEVICE_ORDER="PCI_BUS_ID")
        return env

    def worker_name(self, host: str | None = None) -> str:
        """``<host>-gpu<N>`` for a GPU slot, ``<host>-<pid>-slot<k>`` for a CPU slot."""
        host = host or socket.gethostname()
        if self.devices:
            return safe_name(f"{host}-{self.label}")[:100]
        return safe_name(f"{host}-{os.getpid()}-{self.label}")[:100]

    def metadata(self, host: str | None = None) -> dict[str, object]:
        """Worker metadata of this slot: host, slot index and, for GPU slots, the device
        indices with their UUIDs and names when known."""
        meta: dict[str, object] = {"host": host or socket.gethostname(), "slot": self.index}
        if self.devices:
            meta["gpus"] = [d.index for d in self.devices]
            if any(d.uuid for d in self.devices):
                meta["gpu_uuids"] = [d.uuid or "" for d in self.devices]
            if any(d.name for d in self.devices):
                meta["gpu_names"] = [d.name or "" for d in self.devices]
        return meta


def parse_gpus(text: str) -> list[int] | None:
    """``"0,1,3"`` -> ``[0, 1, 3]``; ``"all"`` -> ``None`` (detect). Raises
    ``LabtaskerValueError`` naming the bad element (not an index >= 0, or repeated)."""
    text = text.strip()
    if text.lower() == "all":
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise LabtaskerValueError(
                f"--gpus: {part!r} is not a device index (use e.g. --gpus 0,1,2 or --gpus all)"
            )
        if int(part) in out:
            raise LabtaskerValueError(f"--gpus: device {part} is listed twice")
        out.append(int(part))
    if len(out) > MAX_SLOTS:
        raise LabtaskerValueError(f"--gpus: at most {MAX_SLOTS} devices, got {len(out)}")
    return out


def _nvml_devices() -> list[Device] | None:
    """The GPUs NVML reports, or None when NVML is unavailable (no library, no driver)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded...
        return None
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            devices.append(Device(i, _text(uuid), _text(name)))
        return devices
    except Exception:  # noqa: BLE001 - a broken NVML: fall back to nvidia-smi
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


_SMI_LINE = re.compile(r"^GPU\s+(\d+):\s*(.*?)\s*(?:\(UUID:\s*([^)\s]+)\s*\))?\s*$")


def _smi_devices() -> list[Device] | None:
    """The GPUs ``nvidia-smi -L`` lists, or None when it is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, "-L"], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    devices = []
    for line in proc.stdout.splitlines():
        m = _SMI_LINE.match(line.strip())
        if m:
            devices.append(Device(int(m.group(1)), m.group(3), m.group(2) or None))
    return devices


def machine_gpus() -> list[Device]:
    """Every GPU of this machine (NVML, else ``nvidia-smi -L``; empty if neither works)."""
    found = _nvml_devices()
    if not found:
        found = _smi_devices()
    return sorted(found or [], key=lambda d: d.index)


def allowed_gpus(devices: Sequence[Device], visible: str | None) -> list[Device]:
    """``devices`` restricted to ``visible`` (a ``CUDA_VISIBLE_DEVICES`` value: indices or
    ``GPU-<uuid>`` prefixes, comma-separated; parsing stops at the first invalid entry as
    CUDA does). ``None`` allows all; an empty value none."""
    if visible is None:
        return list(devices)
    allowed: list[Device] = []
    for entry in visible.split(","):
        entry = entry.strip()
        match: Device | None = None
        if entry.isdigit():
            match = next((d for d in devices if d.index == int(entry)), None)
        elif entry.startswith(("GPU-", "MIG-")):
            match = next((d for d in devices if d.uuid and d.uuid.startswith(entry)), None)
        if match is None:
            break
        if match not in allowed:
            allowed.append(match)
    return allowed


def plan_slots(
    gpus: str | None,
    gpus_per_task: int = 1,
    parallel: int | None = None,
    *,
    environ: dict[str, str] | None = None,
) -> list[Slot]:
    """The slots of one loop. ``gpus``: ``"0,1,2"``, ``"all"`` or None; ``parallel``: a
    number of CPU slots (not with ``gpus``). Returns ``[]`` when neither is given (a plain
    loop). Raises ``LabtaskerValueError`` with a one-line message: bad list, no GPU found,
    fewer devices than ``gpus_per_task``, a count out of range."""
    env = os.environ if environ is None else environ
    if parallel is not None:
        check_slot_request(gpus, gpus_per_task, parallel)
        return [Slot(i) for i in range(parallel)]
    if gpus is None:
        check_slot_request(gpus, gpus_per_task, parallel)
        return []
    wanted = check_slot_request(gpus, gpus_per_task, parallel)
    if wanted is None:
        devices = allowed_gpus(machine_gpus(), env.get("CUDA_VISIBLE_DEVICES"))
        if not devices:
            where = (
                f" among CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r}"
                if "CUDA_VISIBLE_DEVICES" in env
                else ""
            )
            raise LabtaskerValueError(
                f"--gpus all: no GPU found{where} (neither NVML nor `nvidia-smi -L` lists one)"
            )
    else:
        known = {d.index: d for d in machine_gpus()} if wanted else {}
        devices = [known.get(i, Device(i)) for i in wanted]
        _check_visible(devices, env.get("CUDA_VISIBLE_DEVICES"), list(known.values()))
    return _split(devices, gpus_per_task)


def _check_visible(devices: list[Device], visible: str | None, machine: list[Device]) -> None:
    """Refuse listed devices outside an already-set ``CUDA_VISIBLE_DEVICES`` (the slots' own
    ``CUDA_VISIBLE_DEVICES`` would replace it, putting jobs on GPUs this shell was not given).
    Entries given as UUIDs are checked only when the machine's devices (``machine``) are
    known."""
    if visible is None:
        return
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if all(e.isdigit() for e in entries):
        allowed = {int(e) for e in entries}
    elif machine:
        allowed = {d.index for d in allowed_gpus(machine, visible)}
    else:
        return  # UUID entries and no device list to resolve them: nothing to check against
    outside = [str(d.index) for d in devices if d.index not in allowed]
    if outside:
        raise LabtaskerValueError(
            f"--gpus: device {', '.join(outside)} not among CUDA_VISIBLE_DEVICES={visible!r} "
            "(list devices of that set by their nvidia-smi index, or use --gpus all)"
        )


def check_slot_request(
    gpus: str | None, gpus_per_task: int = 1, parallel: int | None = None
) -> list[int] | None:
    """Validate a slot request without looking at the machine; returns the listed device
    indices (None for ``"all"`` or no ``gpus``). Raises ``LabtaskerValueError`` (one line)."""
    if isinstance(gpus_per_task, bool) or not isinstance(gpus_per_task, int) or gpus_per_task < 1:
        raise LabtaskerValueError(f"--gpus-per-task must be an integer >= 1, got {gpus_per_task!r}")
    if parallel is not None:
        if gpus is not None:
            raise LabtaskerValueError("give --gpus or --parallel, not both")
        if (
            isinstance(parallel, bool)
            or not isinstance(parallel, int)
            or not 1 <= parallel <= MAX_SLOTS
        ):
            raise LabtaskerValueError(
                f"--parallel must be an integer from 1 to {MAX_SLOTS}, got {parallel!r}"
            )
        return None
    if gpus is None:
        if gpus_per_task != 1:
            raise LabtaskerValueError("--gpus-per-task needs --gpus")
        return None
    wanted = parse_gpus(gpus)
    if wanted is not None:
        _split([Device(i) for i in wanted], gpus_per_task)
    return wanted


def _split(devices: Sequence[Device], gpus_per_task: int) -> list[Slot]:
    if len(devices) < gpus_per_task:
        raise LabtaskerValueError(
            f"--gpus-per-task {gpus_per_task} needs at least {gpus_per_task} devices, "
            f"got {len(devices)}"
        )
    if len(devices) % gpus_per_task:
        raise LabtaskerValueError(
            f"--gpus-per-task {gpus_per_task}: {len(devices)} devices do not split into "
            f"slots of {gpus_per_task}"
        )
    return [
        Slot(k, tuple(devices[k * gpus_per_task : (k + 1) * gpus_per_task]))
        for k in range(len(devices) // gpus_per_task)
    ]
