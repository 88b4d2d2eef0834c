"""The machine a figure was measured on: figures compare only within one CPU, so every bench names it."""

from __future__ import annotations

import os
import subprocess

SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_description() -> str:
    """`lscpu`'s model name, the logical CPUs, and which AVX2/AVX-512/AMX flags the CPU has."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return f"unknown CPU (no lscpu), {os.cpu_count()} CPUs"
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}
    flags = set(fields.get("Flags", "").split())
    shown = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in SHOWN_FLAGS)
    return f"{fields.get('Model name', '?')}, {fields.get('CPU(s)', '?')} CPUs; {shown}"
