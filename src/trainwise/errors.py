"""Errors a user can cause and fix: they end a command with one clear line and exit code 2."""


class UserError(Exception):
    """A problem with the user's config, data or environment; the message names the problem and the fix."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM; the run is KILLED and can be resumed."""

    def __init__(self, signum: int, run_id: str):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
        self.run_id = run_id
        self.exit_code = 128 + signum
