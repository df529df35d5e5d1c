"""The one exception type for bad user input in the experiments layer."""


class ConfigError(ValueError):
    """An invalid config value or CLI flag; the message is one line naming the key and allowed values."""
