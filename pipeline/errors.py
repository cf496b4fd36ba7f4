"""The one error type the CLI turns into a single clear line and a non-zero exit."""


class PipelineError(Exception):
    """A problem with the user's input (config, data, files): its message is shown as is."""
