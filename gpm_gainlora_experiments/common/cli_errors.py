"""How the command lines end on bad input: one line naming the problem, not a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

#: Packages whose own ``ValueError``/``FileNotFoundError`` are messages to the user.
_OUR_PACKAGES = frozenset({"gpm_gainlora_experiments", "avalanche_gpm", "avalanche_gainlora"})


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a ``ValueError`` or ``FileNotFoundError`` raised by this project's checks (a bad option,
    missing data files, a record made under other settings) into ``SystemExit`` with its message.

    The same errors raised inside torch or another library are bugs, not bad input: they keep
    their traceback.
    """
    try:
        yield
    except (ValueError, FileNotFoundError) as error:
        if not _raised_by_us(error):
            raise
        raise SystemExit(f"error: {error}") from None


def _raised_by_us(error: BaseException) -> bool:
    """Whether the innermost frame of the error's traceback belongs to one of our packages."""
    frame = error.__traceback__
    if frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    module = frame.tb_frame.f_globals
    # Under ``python -m`` the module is ``__main__``; its spec keeps the real name.
    name = module["__spec__"].name if module.get("__spec__") else module.get("__name__", "")
    return name.split(".")[0] in _OUR_PACKAGES
