"""Domain errors. Every error a user can cause derives from FunnelrecError and carries a
one-line message that names the problem; the CLI maps them to exit code 2, HTTP to 4xx."""


class FunnelrecError(Exception):
    """Base class of errors caused by input, config or data (never by a bug)."""


class ConfigError(FunnelrecError):
    """A config file or parameter is wrong: unknown key, bad type, out-of-range value."""


class DataError(FunnelrecError):
    """A dataset is missing, malformed, or violates the data contract."""


class UnknownComponentError(ConfigError):
    """A registry was asked for a name it does not hold."""


class NotFittedError(FunnelrecError):
    """A fitted object (channel, model, index) was used before `fit`/`load`."""


class ArtifactError(FunnelrecError):
    """A saved artifact (index, filter, checkpoint) is corrupt or does not match its use."""


class ArtifactRefused(ArtifactError):
    """An artifact path outside the directory a server may load from (a reload is not a way to
    make the server unpickle arbitrary files)."""


class GuardrailRefused(FunnelrecError):
    """An online update the guardrail would not publish: the candidate scores worse than the
    served version on the held-out window by more than the configured margin (the message names
    both figures and the margin)."""
