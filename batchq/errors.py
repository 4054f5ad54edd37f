"""One rooted hierarchy; each error knows the documented exit code the CLI returns for it."""

from __future__ import annotations


class BatchqError(Exception):
    """Base of every error batchq raises on purpose. Its message is meant for a person."""

    exit_code = 1


class ConfigError(BatchqError):
    """A setting, profile or option is wrong."""

    exit_code = 2


class InvalidRequest(BatchqError):
    """An HTTP request that cannot be served as asked; `param` names the field at fault."""

    exit_code = 2

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class NotNow(BatchqError):
    """The job is not in a state that allows this (retrying a running job, say)."""

    exit_code = 2


class InputError(BatchqError):
    """The submitted file was refused; `problems` lists one message per bad line (the first
    few). A problem with the whole file (too big, empty) is a headline with no problems."""

    exit_code = 3

    def __init__(self, path: str, problems: list[str], total_bad: int,
                 headline: str | None = None):
        self.path = path
        self.problems = problems
        self.total_bad = total_bad
        shown = "\n".join(problems)
        more = total_bad - len(problems)
        tail = f"\n... and {more} more invalid line(s)" if more > 0 else ""
        headline = headline or f"{path}: {total_bad} invalid line(s), no job created"
        super().__init__("\n".join(part for part in (headline, shown + tail) if part))


class TooLarge(BatchqError):
    """An upload went past a size or line limit while it arrived; nothing of it was kept."""

    exit_code = 3


class OverQuota(BatchqError):
    """A tenant's limit (batches, pending lines, requests per minute) would be passed."""

    exit_code = 2

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after  # seconds until trying again may work


class NotFound(BatchqError):
    """An unknown job id, model alias or missing model directory."""

    exit_code = 4


class ServiceUnavailable(BatchqError):
    """The database or the broker cannot be reached."""

    exit_code = 5


class JobNotCompleted(BatchqError):
    """A waited-for job ended failed or cancelled."""

    exit_code = 6
