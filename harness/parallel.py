"""Running per-item work (decoding image files) from a few threads, in order.

Pillow, NumPy's file readers and PyTorch release the GIL while they decode, so a handful of
threads pays off for file-heavy data sets without the cost of worker processes. Items are handed
out in chunks, and chunks complete in submission order, so the error raised is the one of the
first bad item and progress can be reported per chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def run_in_threads(
    n: int,
    work: Callable[[int], None],
    *,
    chunk_size: int = 256,
    workers: int = 4,
    on_chunk: Callable[[int, int], None] | None = None,
) -> None:
    """Call `work(i)` for every i < n from up to `workers` threads; `on_chunk(done, total)` after
    each chunk completes, in order."""
    chunks = [range(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]
    if not chunks:
        return

    def run(chunk: range) -> None:
        for i in chunk:
            work(i)

    executor = ThreadPoolExecutor(max_workers=max(1, min(workers, len(chunks))))
    try:
        for done, _ in enumerate(executor.map(run, chunks), start=1):
            if on_chunk is not None:
                on_chunk(done, len(chunks))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
