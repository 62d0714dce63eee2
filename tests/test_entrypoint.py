"""deploy/entrypoint.sh: each role runs its exact command, by exec, and a wrong role is refused.

The script runs with a PATH whose uvicorn, celery and python are stubs recording how they were
started (their pid, working directory and argv): this tests the script's dispatch, not the
programs, which the rest of the suite runs for real. The expected commands are read from where
the project already states them: the README's production command and the Makefile's targets.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"

# Records the stub's pid ($$ stays the pid of the process that exec'd it), cwd, name and argv.
STUB = """#!/bin/sh
{ echo "$$"; pwd; basename "$0"; for arg in "$@"; do echo "$arg"; done; } > "$STUB_RECORD"
"""
STUBS = ["uvicorn", "celery", "python", "chat-tool"]


@dataclass
class Run:
    pid: int
    returncode: int
    stderr: str
    record: list[str]

    @property
    def stub_pid(self) -> int:
        return int(self.record[0])

    @property
    def cwd(self) -> Path:
        return Path(self.record[1])

    @property
    def argv(self) -> list[str]:
        return self.record[2:]


def run_entrypoint(tmp_path: Path, *args: str, **env: str) -> Run:
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name in STUBS:
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    record = tmp_path / "record"
    record.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [str(ENTRYPOINT), *args],
        # Started from elsewhere, as Kubernetes may: the script finds manage.py itself.
        cwd=tmp_path,
        env={"PATH": f"{stubs}:/usr/bin:/bin", "STUB_RECORD": str(record), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = proc.communicate(timeout=10)
    lines = record.read_text().splitlines() if record.exists() else []
    return Run(pid=proc.pid, returncode=proc.returncode, stderr=stderr, record=lines)


def readme_production_command() -> list[str]:
    """The uvicorn command under "Production serves with uvicorn" in README.md."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"```sh\n(uvicorn project\.asgi:application .*?)```", readme, re.DOTALL)
    assert match, "README.md has no ```sh block starting with the uvicorn production command"
    return shlex.split(match.group(1).replace("\\\n", " "))


def make_target_command(target: str, program: str) -> list[str]:
    """The line of a Makefile target that runs `$(BIN)/<program>`, split into argv."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, f"the Makefile has no {target} target"
    for line in recipe.group(1).splitlines():
        argv = shlex.split(line.strip())
        if argv and argv[0] == f"$(BIN)/{program}":
            return [program, *argv[1:]]
    raise AssertionError(f"make {target} runs no $(BIN)/{program}")


def test_web_runs_the_readmes_production_command(tmp_path: Path) -> None:
    run = run_entrypoint(tmp_path, "web")
    assert run.returncode == 0, run.stderr
    assert run.argv == readme_production_command()
    assert run.cwd == ROOT


def test_web_listens_on_port_from_the_environment(tmp_path: Path) -> None:
    argv = run_entrypoint(tmp_path, "web", PORT="9001").argv
    assert argv[argv.index("--port") + 1] == "9001"
    assert argv[argv.index("--host") + 1] == "0.0.0.0"  # noqa: S104 -- the pod's address


def test_web_passes_extra_arguments_to_uvicorn(tmp_path: Path) -> None:
    argv = run_entrypoint(tmp_path, "web", "--log-level", "warning").argv
    assert argv == [*readme_production_command(), "--log-level", "warning"]


def test_worker_is_make_worker_without_embedded_beat(tmp_path: Path) -> None:
    # `make worker` embeds beat (-B) for local use; in the image beat is its own process.
    expected = [a for a in make_target_command("worker", "celery") if a != "-B"]
    assert expected == ["celery", "-A", "project", "worker", "-l", "info"]
    assert run_entrypoint(tmp_path, "worker").argv == expected


def test_beat_is_make_beat(tmp_path: Path) -> None:
    assert run_entrypoint(tmp_path, "beat").argv == make_target_command("beat", "celery")


def test_migrate_is_the_migration_make_run_applies(tmp_path: Path) -> None:
    run = run_entrypoint(tmp_path, "migrate")
    assert run.argv == make_target_command("run", "python")
    assert run.argv == ["python", "manage.py", "migrate", "--noinput"]
    assert run.cwd == ROOT


def test_manage_runs_manage_py_with_the_arguments(tmp_path: Path) -> None:
    run = run_entrypoint(tmp_path, "manage", "issue_token", "alice", "--create")
    assert run.argv == ["python", "manage.py", "issue_token", "alice", "--create"]


def test_any_other_program_on_path_runs_as_given(tmp_path: Path) -> None:
    run = run_entrypoint(tmp_path, "chat-tool", "a b", "--c")
    assert run.argv == ["chat-tool", "a b", "--c"]


@pytest.mark.parametrize(
    "args", [["web"], ["worker"], ["beat"], ["migrate"], ["manage", "check"], ["chat-tool"]]
)
def test_every_role_execs_so_signals_reach_the_program(tmp_path: Path, args: list[str]) -> None:
    # The program has the pid the script started with: no shell is left between it and
    # Kubernetes' SIGTERM.
    run = run_entrypoint(tmp_path, *args)
    assert run.stub_pid == run.pid


@pytest.mark.parametrize("args", [["wbe"], [], ["./no-such-program"]])
def test_an_unknown_role_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    run = run_entrypoint(tmp_path, *args)
    assert run.returncode == 2
    assert "usage: entrypoint.sh ROLE" in run.stderr
    assert run.record == []


def test_help_prints_the_usage_and_succeeds(tmp_path: Path) -> None:
    run = run_entrypoint(tmp_path, "--help")
    assert (run.returncode, run.record) == (0, [])
    assert "web [ARGS]" in run.stderr
