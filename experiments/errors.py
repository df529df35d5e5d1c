"""The one exception type for bad user input in the experiments layer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class ConfigError(ValueError):
    """An invalid config value or CLI flag; the message is one line naming the key and allowed values."""


@contextlib.contextmanager
def config_section(prefix: str) -> Iterator[None]:
    """Library ``ValueError``s inside become ``ConfigError(prefix + message)``.

    The library names its arguments (``drop_fraction=1.5: allowed values are in [0, 1]``); they are
    named like the config keys, so ``config_section("sparsity.")`` names the key.
    """
    try:
        yield
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{prefix}{e}") from None
