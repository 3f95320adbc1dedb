"""What `auditcast rec` runs, and how it reports the end: pure helpers, no PTY."""

from __future__ import annotations

import pytest

from auditcast.collectors.pty.cli import RecResult, summary_line
from auditcast.collectors.pty.command import (
    CommandConflict,
    child_env,
    describe_exit,
    exit_code_from_returncode,
    resolve_command,
)


def test_args_after_double_dash_run_as_given_and_display_shell_quoted() -> None:
    cmd = resolve_command(None, ["bash", "-c", 'printf "hi\\n"; exit 3'], {})
    assert cmd.argv == ("bash", "-c", 'printf "hi\\n"; exit 3')
    assert cmd.display == "bash -c 'printf \"hi\\n\"; exit 3'"


def test_command_option_is_a_shell_command_line() -> None:
    cmd = resolve_command("ls -l | head", [], {"SHELL": "/bin/zsh"})
    assert cmd.argv == ("/bin/sh", "-c", "ls -l | head")
    assert cmd.display == "ls -l | head"


def test_no_command_records_the_users_shell() -> None:
    assert resolve_command(None, [], {"SHELL": "/bin/zsh"}).argv == ("/bin/zsh",)


def test_no_command_and_no_shell_variable_falls_back_to_sh() -> None:
    assert resolve_command(None, [], {}).argv == ("/bin/sh",)
    assert resolve_command(None, [], {"SHELL": ""}).argv == ("/bin/sh",)


def test_both_command_forms_are_refused() -> None:
    with pytest.raises(CommandConflict, match="either with --command or after --"):
        resolve_command("ls", ["ls"], {})


def test_blank_command_option_is_refused() -> None:
    with pytest.raises(CommandConflict, match="empty"):
        resolve_command("  ", [], {})


def test_signal_deaths_become_shell_exit_codes() -> None:
    assert exit_code_from_returncode(3) == 3
    assert exit_code_from_returncode(0) == 0
    assert exit_code_from_returncode(-2) == 130
    assert exit_code_from_returncode(-9) == 137


def test_exit_description_names_the_signal() -> None:
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(130) == "exit code 130 (SIGINT)"
    assert describe_exit(128) == "exit code 128"
    assert describe_exit(128 + 200) == "exit code 328"


def test_recorded_command_knows_it_is_recorded_and_under_which_session() -> None:
    env = child_env({"PATH": "/bin", "AUDITCAST_SESSION_ID": "outer"}, "s-123")
    assert env == {"PATH": "/bin", "AUDITCAST_REC": "1", "AUDITCAST_SESSION_ID": "s-123"}
    assert "AUDITCAST_SESSION_ID" not in child_env({"AUDITCAST_SESSION_ID": "outer"}, None)


def test_summary_tells_the_session_id_and_exit_code() -> None:
    result = RecResult("0193-abc", 3, delivered=True, bytes_out=7, bytes_in=0)
    assert summary_line(result) == "session 0193-abc recorded (exit code 3)"
