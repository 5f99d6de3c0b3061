"""TensorFlow started for a shell that shows its own progress: without its start-up lines unless asked for.

TensorFlow 2.21 writes, from C++ and before any setting of ours can reach its logger, absl's notice ("All log
messages before absl::InitializeLog() is called are written to STDERR"), "oneDNN custom operations are on" and
"Could not find cuda drivers" (each twice: two of its libraries log them). TF_CPP_MIN_LOG_LEVEL quiets only what
comes after. So the shells (`nuclei train`, `finetune`, `demo`, the napari plugin's fine-tune process) call
`start_tensorflow` before anything imports it: without ``verbose`` the import runs with the process's stderr
(file descriptor 2) set aside, and what it wrote comes back without those lines. Nothing happens on import of
this module; a library user's TensorFlow is left as it is.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable

# absl's notice, absl-formatted info/warning/error lines (I0000 00:00:1796606870.118185 2106 port.cc:153] ...),
# and the CPU-instructions notice that follows the last of them.
START_UP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    r"|To enable the following instructions:)"
)


def start_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow and Keras; without ``verbose``, with TensorFlow's C++ logging at FATAL only
    (TF_CPP_MIN_LOG_LEVEL=3, unless set already) and its start-up lines dropped (`START_UP_NOISE`); anything
    else it wrote on stderr while importing is written there after. With ``verbose``, all of it shows."""
    if "tensorflow" in sys.modules:
        return
    if verbose:
        import keras  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    written = _stderr_while(_import_keras)
    kept = [line for line in written.splitlines(keepends=True) if not START_UP_NOISE.match(line)]
    if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


def _import_keras() -> None:
    import keras  # noqa: F401  (imports TensorFlow, its backend)


def _stderr_while(work: Callable[[], None]) -> str:
    """What ``work()`` wrote on file descriptor 2 (C++ and Python alike), kept from the terminal meanwhile. If
    it fails, all it wrote goes to stderr before the exception does."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            work()
        except BaseException:
            _restore(saved)
            sink.seek(0)
            os.write(2, sink.read())
            raise
        _restore(saved)
        sink.seek(0)
        return sink.read().decode(errors="replace")


def _restore(saved: int) -> None:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
