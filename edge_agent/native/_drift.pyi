from numpy.typing import NDArray

def count_slots(x: NDArray, points: NDArray, starts: NDArray, counts: NDArray, /) -> bool: ...
def ks_gaps(
    le: NDArray,
    lt: NDArray,
    total: NDArray,
    ref_le: NDArray,
    ref_lt: NDArray,
    starts: NDArray,
    out: NDArray,
    /,
) -> None: ...
