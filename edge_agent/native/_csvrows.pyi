from numpy.typing import NDArray

def csv_rows(
    lines: list[bytes], out: NDArray, lo: NDArray, hi: NDArray, max_len: int, /
) -> list[int] | None: ...
