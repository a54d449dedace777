"""The trial process itself: quiet library logs, imports made before measuring, its allocator and Ray node."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from peft_search.search.verbosity import to_log, verbose


class _DropPrefix(logging.Filter):
    """Drops one library log message by its start, leaving that logger's other messages alone."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


# LLM.int8 computes in fp16, so a CPU trial's fp32 inputs are always cast: bitsandbytes logs it at every step.
_INT8_CAST = _DropPrefix("MatMul8bitLt: inputs will be cast")
# bitsandbytes (0.50) looks for an optional faster CPU 4-bit kernel (the `kernels` package) at import and says so
# when it is missing; the generic CPU path it falls back to is the one every CPU trial is measured on.
_NO_KERNELS = _DropPrefix("Failed to load CPU gemm_4bit_forward")


def quiet_bitsandbytes() -> None:
    """The driver imports bitsandbytes too (planning the quantized levels): the same message filter as trials."""
    if not verbose():
        logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NO_KERNELS)


def quiet_libraries() -> None:
    """Keep worker logs to what matters, by message, in the trial's process only: a new task head, weight-loading
    progress bars and the int8 cast are expected. ``-v`` (``PEFT_SEARCH_VERBOSE``) keeps everything."""
    if verbose():
        return
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    # Any other library warning (PEFT's "Unsupported layer type" for LN tuning, ...) goes to the command's log file,
    # and so does what Python reports as ignored (Ray's SIGTERM landing in a garbage-collector callback as Tune
    # ends a trial's actor prints "Exception ignored in ..." with a traceback).
    to_log(logging.getLogger("py.warnings"))
    logging.captureWarnings(True)
    to_log(logging.getLogger("peft_search.ignored"))
    sys.unraisablehook = _ignored_to_log
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_INT8_CAST)  # once: addFilter dedupes
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NO_KERNELS)
    # PEFT warns of zero-sized LoRA tensors as unsharded ZeRO-3/FSDP weights; trials never shard (DDP at most), and
    # AdaLoRA saves a layer whose every rank it pruned as exactly such a tensor.
    warnings.filterwarnings("ignore", message=r"Adapter '.*': \d+ LoRA tensor\(s\) have invalid shape")


def _ignored_to_log(unraisable) -> None:
    logging.getLogger("peft_search.ignored").warning(
        "Exception ignored in %r",
        unraisable.object,
        exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback),
    )


def import_training_libraries(quantization: str) -> None:
    """Import what the trial will use before measuring its starting memory, so the baseline includes it."""
    from peft import get_peft_model  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: F401

    if quantization != "none":
        import bitsandbytes  # noqa: F401


def heap_allocator() -> str:
    """The heap allocator this process runs with: "jemalloc" when it is loaded, else "system"."""
    try:
        maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    except OSError:
        return "system"
    return "jemalloc" if "libjemalloc" in maps else "system"


def allocator_label() -> str:
    """The trials table's ``cpu_allocator``: the heap allocator, with jemalloc's options where the process was
    started with any (``MALLOC_CONF``, which changes its speed and peak memory): ``system``, ``jemalloc`` or
    ``jemalloc (dirty_decay_ms:-1,muzzy_decay_ms:-1)``."""
    name = heap_allocator()
    options = os.environ.get("MALLOC_CONF", "").strip() if name == "jemalloc" else ""
    return f"{name} ({options})" if options else name


def node_id() -> str | None:
    """The Ray node this trial ran on (rank 0's for several workers): which machine, on a cluster."""
    ray = sys.modules.get("ray")  # not imported: no Ray here (a benchmark's own process, say)
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None


def return_freed_memory() -> None:
    """Give freed heap back to the OS (glibc and a preloaded jemalloc keep it otherwise), so a reused actor's
    resident set shrinks."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL(name).malloc_trim(0)
    if heap_allocator() == "jemalloc":
        # Every arena's unused dirty pages back to the OS: MALLCTL_ARENAS_ALL is 4096.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).mallctl(b"arena.4096.purge", None, None, None, ctypes.c_size_t(0))
