"""Errors a user can cause and fix: they end a command with one clear line and exit code 2."""


class UserError(Exception):
    """A problem with the user's config, data or environment; the message names the problem and the fix."""

    exit_code = 2

    def __init__(self, message: str = ""):
        # torch's DataLoader re-raises an error of one of its worker processes as the same type built from a
        # message that holds the worker's whole traceback; the user's line is its last one.
        if "Original Traceback" in message:
            message = message.strip().splitlines()[-1].partition(": ")[2] or message
        super().__init__(message)


class Interrupted(BaseException):
    """A run stopped on SIGINT/SIGTERM; it ends KILLED and can be resumed.

    A BaseException, as KeyboardInterrupt is (no `except Exception` on the way swallows it), but not a
    KeyboardInterrupt: inside `Trainer.fit` Lightning answers one of those with `sys.exit(1)`."""

    def __init__(self, signum: int, run_id: str = ""):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
        self.run_id = run_id
        self.exit_code = 128 + signum


class TrackingFailed(Exception):
    """Training finished, but the tracking store failed on the way; nothing local was lost."""

    exit_code = 1

    def __init__(self, uri: str, error: Exception, local_dir=None):
        text = str(error).strip()
        first = text.splitlines()[0][:300] if text else type(error).__name__
        where = f"; checkpoints and final metrics are in {local_dir}" if local_dir else ""
        super().__init__(f"training finished but the tracking store {uri} failed ({first}){where}")
