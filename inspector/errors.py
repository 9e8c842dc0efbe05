"""The project's few exception types; library errors are translated into these at the boundaries."""


class InspectorError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(InspectorError):
    """A setting, path or file that the program cannot start with."""


class ModelFileError(ConfigError):
    """A model file that is missing, truncated, tampered with, or not ours."""


class TransportError(InspectorError):
    """Kafka could not be reached, or did not acknowledge in time."""


class BadFrame(InspectorError):
    """A record that cannot be scored; `reason` is a short fixed token used as a DLQ header and label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ActuatorError(InspectorError):
    """An ejector could not be reached or did not take the command (the ejection counts as failed)."""
