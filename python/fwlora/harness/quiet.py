"""Third-party import-time messages that concern nothing a harness run does, kept off its output.

peft imports bitsandbytes whenever it is installed (``peft/helpers.py``, at ``import peft``,
which transformers' Trainer utilities import too), and bitsandbytes' CPU backend then logs, at
import, that an optional kernel for 4-bit matrix products (kernels-community) is missing. The
harness never builds a quantised layer, so a newcomer running `fwlora demo` would read a
failure about something they did not ask for. Avoiding the import is not ours to do: peft
decides at its own import whether QLoRA layers exist. So only that logger is raised to ERROR
(its errors, and every other bitsandbytes message, still show) by `fwlora.harness` on import,
before anything imports peft.
"""

from __future__ import annotations

import logging

# Loggers whose warnings are import-time probes for optional features the harness never uses.
# The second: the `kernels` package that same probe goes through logs, with the hub offline
# (HF_HUB_OFFLINE=1), that it skips the publisher trust check of that 4-bit kernel's repo.
IMPORT_PROBES = ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub")


def quiet_import_probes() -> None:
    for name in IMPORT_PROBES:
        logging.getLogger(name).setLevel(logging.ERROR)
