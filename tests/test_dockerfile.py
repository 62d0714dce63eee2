"""The Dockerfile, kept honest without a Docker engine: what it copies exists and reaches the
build context, the final stage has no compiler and runs as UID 10001, no secret is baked in,
and its two Python steps (the runtime requirements, collectstatic) do what they claim."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The virtualenv running the tests stands in for the image's /opt/venv.
VENV_BIN = Path(sys.executable).parent
Instruction = tuple[str, str]


def instructions() -> list[Instruction]:
    """(KEYWORD, arguments) per instruction, continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, inside a continuation too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


def stages() -> list[list[Instruction]]:
    found: list[list[Instruction]] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            found.append([])
        found[-1].append((keyword, args))
    return found


def final_stage() -> list[Instruction]:
    return stages()[-1]


def args_of(stage: list[Instruction], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    pairs = (item.split("=", 1) for args in args_of(stage, "ENV") for item in shlex.split(args))
    return dict(pairs)


# .dockerignore's wildcards (Go's filepath.Match, plus ** for any number of folders).
GLOB = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}


def glob_regex(pattern: str) -> str:
    tokens = re.findall(r"\*\*/|\*\*|\*|\?|\[[^]]*\]|[^*?[]+", pattern)
    return "".join(GLOB.get(t, t if t.startswith("[") else re.escape(t)) for t in tokens)


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (Docker's rules: the last
    matching line wins, `!` lets back in, a pattern matching a folder covers what is in it)."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        regex = glob_regex(line.lstrip("!").strip("/"))
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def copy_sources(stage: list[Instruction]) -> list[str]:
    sources = []
    for args in args_of(stage, "COPY"):
        words = shlex.split(args)
        if any(w.startswith("--from=") for w in words):
            continue
        sources += [w for w in words if not w.startswith("--")][:-1]
    return sources


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    sources = [src for stage in stages() for src in copy_sources(stage)]
    assert "manage.py" in sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
        assert not dockerignore_excludes(src.rstrip("/")), f"COPY {src}: .dockerignore drops it"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/config",
        "var/secret_key",
        "var/db.sqlite3",
        "tests/conftest.py",
        "bench/results/run.json",
        "node_modules/x/index.js",
        "docs/screenshot-chat.png",
        ".env",
        "loadtest/client.py",
        "web/__pycache__/views.cpython-311.pyc",
    ],
)
def test_the_build_context_leaves_out(path: str) -> None:
    assert dockerignore_excludes(path)


def test_both_stages_start_from_the_same_pinned_slim_python() -> None:
    froms = [stage[0][1].split() for stage in stages()]
    assert [f[1:] for f in froms] == [["AS", "builder"], []]
    assert froms[0][0] == froms[1][0]
    assert re.fullmatch(r"python:3\.11-slim-bookworm(@sha256:[0-9a-f]{64})?", froms[0][0])


def test_the_final_stage_installs_no_compiler() -> None:
    runs = " ".join(args_of(final_stage(), "RUN"))
    compilers = re.findall(r"\b(gcc|g\+\+|clang|build-essential|cc|make)\b", runs)
    assert compilers == []
    # Packages come only as the builder's finished virtualenv.
    assert "pip install" not in runs
    assert "COPY --from=builder /opt/venv /opt/venv" in [
        f"COPY {a}" for a in args_of(final_stage(), "COPY")
    ]


def test_the_image_runs_as_a_fixed_non_root_uid() -> None:
    stage = final_stage()
    keywords = [kw for kw, _ in stage]
    assert args_of(stage, "USER") == ["10001:10001"]
    # Nothing runs as root after the switch.
    assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw == "RUN")
    assert "useradd --uid 10001 --gid 10001" in " ".join(args_of(stage, "RUN"))


def test_no_secret_is_baked_into_the_image() -> None:
    for stage in stages():
        names = set(env_of(stage)) | {a.split("=")[0] for a in args_of(stage, "ARG")}
        assert not names & {"SECRET_KEY", "DATABASE_PASSWORD", "EMAIL_HOST_PASSWORD"}
    assert env_of(final_stage())["REQUIRE_SECRET_KEY"] == "1"


def test_what_the_image_writes_goes_under_tmp() -> None:
    assert env_of(final_stage())["CELERY_BEAT_SCHEDULE_FILENAME"].startswith("/tmp/")  # noqa: S108


def test_the_entrypoint_script_is_the_entrypoint_and_web_the_default() -> None:
    stage = final_stage()
    assert json.loads(args_of(stage, "ENTRYPOINT")[0]) == ["/app/deploy/entrypoint.sh"]
    assert args_of(stage, "WORKDIR") == ["/app"]
    assert "--chmod=0755 deploy/entrypoint.sh deploy/entrypoint.sh" in args_of(stage, "COPY")
    assert json.loads(args_of(stage, "CMD")[0]) == ["web"]
    assert args_of(stage, "EXPOSE") == ["8000"]


def test_the_builder_takes_the_runtime_dependencies_only() -> None:
    # Run the builder's own command on pyproject.toml.
    (command,) = [a for a in args_of(stages()[0], "RUN") if "tomllib" in a]
    argv = shlex.split(command.split(">")[0])
    assert argv[:2] == ["python", "-c"]
    out = subprocess.run(
        [str(VENV_BIN / "python"), *argv[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert out == pyproject["project"]["dependencies"]
    assert not any(dep.startswith(("pytest", "numpy", "matplotlib", "ruff")) for dep in out)


def test_collectstatic_at_build_writes_the_hashed_manifest(tmp_path: Path) -> None:
    # The final stage's collectstatic, verbatim, under the image's environment (its paths
    # pointed at this checkout), with STATIC_ROOT in a temporary folder.
    (run,) = [a for a in args_of(final_stage(), "RUN") if "collectstatic" in a]
    command = run.split("&&")[0]
    env = env_of(final_stage()) | {
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "STATIC_ROOT": str(tmp_path / "static"),
    }
    subprocess.run(["/bin/sh", "-c", command], cwd=ROOT, env=env, check=True, timeout=60)
    manifest = json.loads((tmp_path / "static" / "staticfiles.json").read_text())
    assert re.fullmatch(r"app\.[0-9a-f]{12}\.js", manifest["paths"]["app.js"])
    assert (tmp_path / "static" / manifest["paths"]["app.js"]).exists()
