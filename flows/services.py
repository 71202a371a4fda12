"""The processes behind ``idu serve``: a Prefect server, a runner serving IDU's deployments, the review UI.

With ``PREFECT_API_URL`` set, the server named there is used; otherwise an embedded one starts on
127.0.0.1 with its SQLite database, logs and persisted task results under ``STORE/.prefect`` (so a review
that waits for days survives restarts of the server and of the runner). Each process logs to a file in
that folder; the context manager stops them all (SIGINT, then SIGTERM, then SIGKILL).

    with services(Path("store")) as s:
        print(s.api_url, s.ui_url)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from reconstruction.errors import IDUError

log = logging.getLogger(__name__)


class ServiceError(IDUError):
    """A service that did not start (names it and where its log is)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def prefect_home(store: str | os.PathLike) -> Path:
    return Path(store).resolve() / ".prefect"


def embedded_env(store: str | os.PathLike, api_url: str) -> dict[str, str]:
    """Environment of every process of one embedded deployment (server, runner, flow runs, CLI)."""
    home = prefect_home(store)
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_RUNNER_POLL_FREQUENCY": os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY", "2"),
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        "IDU_STORE": str(Path(store).resolve()),
    }


def healthy(api_url: str) -> bool:
    """Whether ``<api_url>/health`` answers 200."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def wait_healthy(
    api_url: str,
    timeout: float,
    proc: subprocess.Popen | None = None,
    what: str = "server",
    log_path: Path | None = None,
) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"the Prefect {what} exited with code {proc.returncode} (log: {log_path})")
        if healthy(api_url):
            return
        time.sleep(0.5)
    raise ServiceError(
        f"the Prefect {what} at {api_url} did not answer within {timeout:.0f} s (log: {log_path})"
    )


def _stop(proc: subprocess.Popen, name: str, grace: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGINT, 5.0), (signal.SIGTERM, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.warning("%s did not stop on SIGINT/SIGTERM: killed", name)


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        log.info("started %s (pid %d, log %s)", self.name, self.proc.pid, self.log_path)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, self.name)


@dataclass
class Services:
    """Running services; ``restart_server`` for tests of restarts."""

    store: Path
    api_url: str
    ui_url: str | None
    env: dict[str, str]
    processes: dict[str, Process] = field(default_factory=dict)

    def start_server(self, timeout: float = 180.0) -> None:
        port = self.api_url.rsplit(":", 1)[1].split("/")[0]
        argv = [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--log-level",
            "WARNING",
        ]
        p = Process("prefect server", argv, self.env, prefect_home(self.store) / "server.log").start()
        self.processes["server"] = p
        wait_healthy(self.api_url, timeout, p.proc, "server", p.log_path)

    def start_runner(self) -> None:
        p = Process(
            "IDU deployments",
            [sys.executable, "-m", "flows.serve"],
            self.env,
            prefect_home(self.store) / "runner.log",
        ).start()
        self.processes["runner"] = p
        _wait_deployments(self.env, p)

    def start_ui(self, host: str, port: int) -> None:
        p = Process(
            "review UI",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "review_ui.app:app",
                "--host",
                host,
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            self.env,
            prefect_home(self.store) / "review_ui.log",
        ).start()
        self.processes["ui"] = p
        wait_healthy(f"http://{host}:{port}/api", 60, p.proc, "review UI", p.log_path)

    def runs_in_progress(self) -> list[int]:
        """Pids of flow-run processes the runner started that are still alive (Linux /proc)."""
        p = self.processes.get("runner")
        if p is None or p.proc is None:
            return []
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == p.proc.pid:
                continue
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == p.proc.pid and fields[0] != "Z":  # session id; not a zombie
                out.append(int(d.name))
        return out

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Until no flow-run process of the runner is alive (a suspended run's process has exited)."""
        t0 = time.monotonic()
        while self.runs_in_progress():
            if time.monotonic() - t0 > timeout:
                raise ServiceError(
                    f"flow runs still executing after {timeout:.0f} s: {self.runs_in_progress()}"
                )
            time.sleep(0.2)

    def stop(self, name: str) -> None:
        p = self.processes.pop(name, None)
        if p is not None:
            p.stop()

    def restart_server(self) -> None:
        self.stop("server")
        self.start_server()

    def stop_all(self) -> None:
        for name in ("ui", "runner", "server"):
            self.stop(name)


def _wait_deployments(env: dict[str, str], runner: Process, timeout: float = 120.0) -> None:
    """Until the runner has registered IDU's deployments with the server."""
    from flows.deployments import DEPLOYMENTS

    t0 = time.monotonic()
    names = {d["deployment"] for d in DEPLOYMENTS}
    url = env["PREFECT_API_URL"].rstrip("/") + "/deployments/filter"
    while time.monotonic() - t0 < timeout:
        if runner.proc is not None and runner.proc.poll() is not None:
            raise ServiceError(
                f"the IDU runner exited with code {runner.proc.returncode} (log: {runner.log_path})"
            )
        try:
            req = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as r:
                have = {d["name"] for d in json.loads(r.read())}
            if names <= have:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise ServiceError(
        f"the IDU runner did not register its deployments within {timeout:.0f} s (log: {runner.log_path})"
    )


@contextlib.contextmanager
def services(
    store: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int | None = None,
    runner: bool = True,
    ui: bool = True,
) -> Iterator[Services]:
    """Start what is missing (server when no PREFECT_API_URL, the runner, the review UI); stop it at exit.

    While inside, ``os.environ`` names the server (PREFECT_API_URL) for this process's Prefect client."""
    store = Path(store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    external = os.environ.get("PREFECT_API_URL")
    api_url = external or f"http://127.0.0.1:{free_port()}/api"
    env = embedded_env(store, api_url) if not external else {"IDU_STORE": str(store)}
    ui_port = port or free_port(host)
    s = Services(store, api_url, f"http://{host}:{ui_port}" if ui else None, env)
    with use_environment(env):
        try:
            if not external:
                s.start_server()
            if runner:
                s.start_runner()
            if ui:
                s.start_ui(host, ui_port)
            state = prefect_home(store) / "serve.json"
            state.parent.mkdir(parents=True, exist_ok=True)
            pids = {n: p.proc.pid for n, p in s.processes.items() if p.proc is not None}
            doc = {"api_url": api_url, "ui_url": s.ui_url, "pid": os.getpid(), "processes": pids}
            state.write_text(json.dumps(doc) + "\n")
            yield s
        finally:
            s.stop_all()
            with contextlib.suppress(OSError):
                (prefect_home(store) / "serve.json").unlink()


@contextlib.contextmanager
def use_environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` in ``os.environ`` (for child processes) and in Prefect's settings of this process (read
    once at import: a client made inside then talks to the server named here)."""
    from prefect.settings import Settings, temporary_settings

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        fresh = Settings()  # from the environment just set
        updates = {
            "PREFECT_API_URL": fresh.api.url,
            "PREFECT_HOME": fresh.home,
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": fresh.results.persist_by_default,
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": fresh.results.local_storage_path,
        }
        from prefect import settings as ps

        with temporary_settings(updates={getattr(ps, k): v for k, v in updates.items()}):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


__all__ = [
    "ServiceError",
    "Services",
    "embedded_env",
    "free_port",
    "prefect_home",
    "services",
    "wait_healthy",
]
