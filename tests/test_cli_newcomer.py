"""What a newcomer meets first on both command lines: --version, the base install without the hub
extra, options after the subcommand, shell completion (issue 16's stumbles)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_hub.cli import app as hub_cli
from edge_agent import __version__
from edge_agent import cli as agent_cli
from tests.support.cli import bundle
from tests.support.processes import Lines

ROOT = Path(__file__).resolve().parent.parent


def run(
    *argv: str, env: dict[str, str] | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        check=False,
        **kw,  # type: ignore[arg-type]
    )


# ---- --version --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("module", "prog"), [("cloud_hub.cli.app", "edgehub"), ("edge_agent.cli", "edge-agent")]
)
def test_version(module: str, prog: str) -> None:
    done = run("-m", module, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{prog} {__version__}\n"


# ---- the base install: no hub extra -----------------------------------------------------------
WITHOUT_HUB = (
    "import sys\n"
    "for name in ('rich', 'sqlalchemy', 'sklearn', 'skl2onnx', 'amqtt', 'fastapi', 'uvicorn'):\n"
    "    sys.modules[name] = None  # what `pip install edgefleet` (no [hub]) leaves out\n"
    "from cloud_hub.cli.app import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize("argv", [["--help"], ["devices", "list"], ["keys", "init"], []])
def test_base_install_says_to_install_the_hub_extra(argv: list[str]) -> None:
    done = run("-c", WITHOUT_HUB, *argv)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr == (
        "edgehub: the hub needs the hub extra: pip install 'edgefleet[hub]' "
        "(missing module: rich)\n"
    )


def test_base_install_still_tells_its_version() -> None:
    done = run("-c", WITHOUT_HUB, "--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"edgehub {__version__}\n", "")


def test_a_command_importing_a_hub_module_late_says_so_too() -> None:
    script = WITHOUT_HUB.replace("'rich', ", "")  # rich there, sqlalchemy (the store) not
    done = run("-c", script, "--home", "nowhere", "devices", "list")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.endswith("(missing module: sqlalchemy)\n")


# ---- a quick start: the parser loads no store, converter or fleet ------------------------------
HEAVY = ("sqlalchemy", "alembic", "onnx", "sklearn", "skl2onnx", "tensorflow", "cloud_hub.harness")


def test_help_and_version_load_no_store_converter_or_fleet() -> None:
    """`edgehub --help`, `--version`, completion and every argument error build the whole
    parser: that must not import what only a command's run needs (it once took 1.7 s, most of
    it onnx through a converter constant, then SQLAlchemy and Alembic)."""
    script = (
        "import sys\n"
        "from cloud_hub.cli.app import build_parser\n"
        "build_parser()\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    done = run("-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n", f"the parser imported: {done.stdout}"


# ---- options after the subcommand -------------------------------------------------------------
def test_agent_verbose_after_the_subcommand(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_text('profile = "raspberry-pi-5"\n[device]\nid = "pi-5"\n')
    assert agent_cli.build_parser().parse_args(["config", "check", str(path), "-v"]).verbose
    assert agent_cli.build_parser().parse_args(["-v", "config", "check", str(path)]).verbose
    assert not agent_cli.build_parser().parse_args(["config", "check", str(path)]).verbose
    done = run("-m", "edge_agent.cli", "config", "check", str(path), "-v")
    assert done.returncode == 0, done.stderr
    assert "ok (device pi-5" in done.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--home", "H", "-v", "devices", "list"],
        ["devices", "list", "--home", "H", "-v"],
        ["devices", "--home", "H", "list", "--verbose"],
        ["-v", "rollout", "status", "--home", "H"],
    ],
)
def test_hub_global_options_anywhere(argv: list[str]) -> None:
    args = hub_cli.build_parser().parse_args(argv)
    assert (args.home, args.verbose) == ("H", True)


def test_hub_defaults_survive_the_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEHUB_HOME", "from-env")
    args = hub_cli.build_parser().parse_args(["devices", "list"])
    assert (args.home, args.verbose) == ("from-env", False)
    args = hub_cli.build_parser().parse_args(["--home", "first", "devices", "list"])
    assert args.home == "first"  # not reset by the subcommand's copy of the option


# ---- shell completion -------------------------------------------------------------------------
def complete(module: str, prog: str, *words: str) -> list[str]:
    script = run("-m", module, "completion", "bash")
    assert script.returncode == 0, script.stderr
    func = "_" + prog.replace("-", "_") + "_complete"
    line = " ".join(f"'{w}'" for w in words)
    done = subprocess.run(
        [
            "bash",
            "-c",
            f"source /dev/stdin; COMP_WORDS=({prog} {line}); COMP_CWORD={len(words)}; {func}; "
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ],
        input=script.stdout,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


def test_bash_completion_of_subcommands_and_options() -> None:
    assert complete("cloud_hub.cli.app", "edgehub", "ro") == ["rollout"]
    assert complete("cloud_hub.cli.app", "edgehub", "--home", "h", "rollout", "st") == [
        "start",
        "status",
    ]
    assert "--watch" in complete("cloud_hub.cli.app", "edgehub", "-v", "rollout", "status", "--")
    assert "--online" in complete("cloud_hub.cli.app", "edgehub", "devices", "list", "--o")


def test_bash_completion_of_the_agent() -> None:
    assert complete("edge_agent.cli", "edge-agent", "con") == ["config"]
    assert sorted(complete("edge_agent.cli", "edge-agent", "config", "")) == [
        "--help",
        "--verbose",
        "-h",
        "-v",
        "check",
    ]


# ---- follow-up hints carry the global options -----------------------------------------------
def test_rollout_start_hint_carries_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloud_hub.store.database import Store
    from cloud_hub.store.url import store_url
    from edge_agent.protocol.messages import ModelRef, Status

    home = tmp_path / "my hub"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    path = tmp_path / "wine-1.zip"
    path.write_bytes(bundle("wine", 1))
    assert hub_cli.main(["--home", str(home), "model", "publish", str(path)]) == 0
    Store(store_url(home)).set_status(
        Status("pi-1", True, 1, "0.1", "raspberry-pi-4", ModelRef("wine", 1))
    )
    capsys.readouterr()
    assert hub_cli.main(["rollout", "start", "wine@1", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    rid = out.split()[1]
    status = f"`edgehub --home '{home}' rollout status {rid}`"
    assert status in out
    assert f"`edgehub --home '{home}' serve`" in out
    # pasted as printed, the hint works
    pasted = shlex.split(status.strip("`"))
    assert pasted[0] == "edgehub"
    assert hub_cli.main(pasted[1:]) == 0
    assert rid in capsys.readouterr().out


# ---- piped output: full width, tables apart -------------------------------------------------
@pytest.fixture(scope="module")
def wide_hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub whose devices have cells far wider than 80 columns."""
    from cloud_hub.store.database import Store
    from cloud_hub.store.url import store_url
    from edge_agent.protocol.messages import ModelRef, Status

    home = tmp_path_factory.mktemp("wide") / "home"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    store = Store(store_url(home))
    for n in (1, 2):
        device = f"greenhouse-north-wing-sensor-cabinet-{n:04d}"
        store.set_status(Status(device, True, 1, "0.1", "raspberry-pi-4", ModelRef("wine", 1)))
        tags = [f"tag-number-{i}-of-a-long-list" for i in range(8)]
        store.label_device(device, add=tags, group="the-longest-group-name-anyone-used")
    return home


def test_piped_tables_are_never_cut(wide_hub: Path) -> None:
    done = run(
        "-m", "cloud_hub.cli.app", "--home", str(wide_hub), "devices", "list", env={"COLUMNS": ""}
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "…" not in out
    tags = ",".join(f"tag-number-{i}-of-a-long-list" for i in range(8))
    for n in (1, 2):
        line = next(ln for ln in out.splitlines() if f"sensor-cabinet-{n:04d}" in ln)
        assert tags in line  # every cell in full, on the device's one line
        assert "the-longest-group-name-anyone-used" in line
    assert max(len(ln) for ln in out.splitlines()) > 200


def test_piped_output_honours_columns(wide_hub: Path) -> None:
    done = run(
        "-m",
        "cloud_hub.cli.app",
        "--home",
        str(wide_hub),
        "devices",
        "list",
        env={"COLUMNS": "100"},
    )
    assert done.returncode == 0, done.stderr
    assert max(len(ln) for ln in done.stdout.splitlines()) <= 100


def test_a_reader_that_closes_the_pipe_early_gets_no_traceback(wide_hub: Path) -> None:
    """`edgehub ... | grep -q x` or `| head -1`: the reader goes away after its first line; the
    command ends quietly, with success, as it said what was asked."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "cloud_hub.cli.app", "--home", str(wide_hub)]
    argv += ["devices", "list", "--json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first byte
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_piped_tables_are_set_apart(tmp_path: Path) -> None:
    path = tmp_path / "wine-1.zip"
    path.write_bytes(bundle("wine", 1))
    done = run("-m", "cloud_hub.cli.app", "model", "inspect", str(path), env={"COLUMNS": ""})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    titles = [
        i
        for i, ln in enumerate(lines)
        if ln.strip() in ("input features (drift reference)", "validation")
    ]
    assert len(titles) == 2, done.stdout
    for i in titles:
        assert lines[i - 1] == ""  # a blank line before each table after the first


# ---- long work shows progress in a pipe -------------------------------------------------------
def test_rollout_watch_prints_lines_in_a_pipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloud_hub.store.database import Store
    from cloud_hub.store.url import store_url
    from edge_agent.protocol.messages import Status

    home = tmp_path / "hub"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    path = tmp_path / "wine-1.zip"
    path.write_bytes(bundle("wine", 1))
    assert hub_cli.main(["--home", str(home), "model", "publish", str(path)]) == 0
    Store(store_url(home)).set_status(Status("pi-1", True, 1, "0.1", "raspberry-pi-4"))
    capsys.readouterr()
    assert hub_cli.main(["--home", str(home), "rollout", "start", "wine@1", "--json"]) == 0
    rid = json.loads(capsys.readouterr().out)["id"]
    watch = subprocess.Popen(
        [
            *(sys.executable, "-m", "cloud_hub.cli.app", "--home", str(home)),
            "rollout",
            "status",
            rid,
            "--watch",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        out = Lines(watch.stdout)  # type: ignore[arg-type]
        first = out.expect(f"rollout {rid} running")
        assert first == f"rollout {rid} running: wave 1/1, 0 healthy, 0 failed, 1 pending"
        assert hub_cli.main(["--home", str(home), "rollout", "pause", rid]) == 0
        out.expect(f"rollout {rid} paused")
        assert hub_cli.main(["--home", str(home), "rollout", "abort", rid]) == 0
        out.expect(f"rollout {rid} aborted")
        assert watch.wait(60) == 0  # it stops with the rollout, after the full view
        out.expect("waves")
    finally:
        if watch.poll() is None:
            watch.kill()
        watch.wait(60)
        for pipe in (watch.stdout, watch.stderr):
            if pipe is not None:
                pipe.close()
