"""Errors a user can cause and fix: they end a command with one clear line and exit code 2."""


class UserError(Exception):
    """A problem with the user's config, data or environment; the message names the problem and the fix."""

    exit_code = 2
