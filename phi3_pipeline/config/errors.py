"""Errors the pipeline raises on purpose, split by what the caller should do about them."""


class PipelineError(Exception):
    """A permanent failure with a message that tells the user what to change; never retried."""


class ConfigError(PipelineError):
    """The configuration or an input the user gave is invalid; raised before any work starts."""


class DatasetError(ConfigError):
    """The data the user gave is malformed; the message names the file, line and field."""


class InsufficientResourcesError(PipelineError):
    """The quota check found a resource short of what the run needs."""


class JobFailedError(PipelineError):
    """The fine-tune job ended in a failed state; the message carries the job's own error."""


class TransientError(Exception):
    """A failure that may go away on its own (a busy port, a server still starting); retried."""
