"""Keep third-party noise that is not the user's business out of the output (torch-free).

What it silences, and why each is not the user's business:

* torch's pytree logger: importing executorch registers its enums with torch's pytree, which logs a
  deprecation of that very call (executorch's code, not ours or the user's);
* ``torch.jit.script is deprecated``: the TorchScript exporter and the spectra's scripted helpers use it
  on purpose (TorchScript is one of the export formats users ask for);
* native start-up lines written straight to file descriptor 2 by C/C++ libraries (ExecuTorch's cpuinfo
  probe: "Error in cpuinfo: ..." on machines whose /sys it cannot parse), which Python's ``warnings`` and
  ``logging`` never see: :func:`native_stderr_captured` redirects the descriptor around the call and
  replays what was written only if the call fails (so a real error keeps its context).

``CORDSNET_DEBUG=1`` turns all of this off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from typing import Iterator

__all__ = ["native_stderr_captured", "quiet_torch"]


def _debug() -> bool:
    return bool(os.environ.get("CORDSNET_DEBUG"))


def quiet_torch() -> None:
    """torch's deprecation chatter about code we call on purpose (see the module docstring)."""
    if _debug():
        return
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.(script|trace|load|save).* is deprecated",
                            category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.(script|trace|load|save).* is deprecated",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\..*` is deprecated")


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Redirect file descriptor 2 (native libraries' direct writes) to a temporary file while the block runs.

    On success what was written is dropped; on an exception it is replayed to stderr first. Python-level
    ``sys.stderr`` writes go through the same descriptor and are handled alike, so keep the block small.
    """
    if _debug():
        yield
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real descriptor (captured by pytest, a notebook)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            if failed:
                sink.seek(0)
                text = sink.read().decode("utf-8", "replace")
                if text:
                    sys.stderr.write(text)
                    sys.stderr.flush()
