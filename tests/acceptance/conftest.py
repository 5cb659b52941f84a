"""Fixtures that run the real service and a real Terraform against the built provider.

Binaries come from target/debug (override with CA_BIN_DIR); Terraform from .tools/bin,
which scripts/install-test-tools.sh fills. Both Terraform versions run every test.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN_DIR = pathlib.Path(os.environ.get("CA_BIN_DIR", REPO / "target" / "debug"))
TOOLS = REPO / ".tools" / "bin"
FIXTURE_PRICES = pathlib.Path(__file__).parent / "fixtures" / "prices"
BUNDLED_PRICES = REPO / "service" / "orchestrator" / "data" / "prices"
TOKEN = "acceptance-test-token-0123456789"
TERRAFORM_VERSIONS = ["1.15.5", "1.0.3"]
WORKLOAD_SERVER = REPO / "tests" / "workloads" / "http_server.py"


class Service:
    """A `computearbitrage serve` process on a free loopback port."""

    def __init__(self, data_dir: pathlib.Path, snapshot_dir: pathlib.Path | None,
                 listen: str = "127.0.0.1:0", extra_env: dict | None = None):
        self.data_dir = data_dir
        self.snapshot_dir = snapshot_dir
        self.extra_env = dict(extra_env or {})
        self.listen = listen
        self.ca_file = None
        self.start()

    def start(self):
        data_dir, snapshot_dir = self.data_dir, self.snapshot_dir
        env = dict(os.environ)
        env["COMPUTEARBITRAGE_BOOTSTRAP_TOKEN"] = TOKEN
        env["RUST_LOG"] = "info"
        if snapshot_dir is not None:
            env["COMPUTEARBITRAGE_PRICING__SNAPSHOT__DIR"] = str(snapshot_dir)
        # Several services run in one session: free router ports, own TCP ranges.
        env["COMPUTEARBITRAGE_ROUTER__LISTEN"] = "127.0.0.1:0"
        env["COMPUTEARBITRAGE_ROUTER__METRICS_LISTEN"] = "127.0.0.1:0"
        if not hasattr(self, "tcp_ports"):
            tcp_min = free_port_block()
            self.tcp_ports = (tcp_min, tcp_min + 9)
        env["COMPUTEARBITRAGE_ROUTER__TCP_PORT_MIN"] = str(self.tcp_ports[0])
        env["COMPUTEARBITRAGE_ROUTER__TCP_PORT_MAX"] = str(self.tcp_ports[1])
        # Most test workloads run a script of the checkout and read files in pytest's
        # private temporary directories: they run as the service's user. The examples
        # run with the defaults (`isolated_service`), each workload its own user.
        env["COMPUTEARBITRAGE_WORKLOADS__LOCAL__RUN_AS"] = "service"
        env.update(self.extra_env)
        self.log = open(data_dir.parent / f"{data_dir.name}.log", "a")
        self.process = subprocess.Popen(
            [str(BIN_DIR / "computearbitrage"), "serve", "--listen", self.listen, "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        self.endpoint = self._read_after("listening on ")
        # `http://host:port` of the router.
        self.router = self._read_after("through the router at ").split()[0]

    def _read_after(self, marker: str) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            if marker in line:
                return line.strip().split(marker, 1)[1]
        self.stop()
        raise RuntimeError(f"service did not start; see {self.log.name}")

    def cli(self, *args: str, check: bool = True, token: str = TOKEN) -> dict:
        """Runs an operator command of the service binary and returns its JSON."""
        env = dict(os.environ, COMPUTEARBITRAGE_ENDPOINT=self.endpoint, COMPUTEARBITRAGE_TOKEN=token)
        if self.ca_file:
            env["COMPUTEARBITRAGE_CA_FILE"] = str(self.ca_file)
        result = subprocess.run(
            [str(BIN_DIR / "computearbitrage"), *args], capture_output=True, text=True, env=env, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"computearbitrage {' '.join(args)} failed: {result.stderr}")
        if result.returncode != 0:
            return {"error": result.stderr}
        return json.loads(result.stdout) if result.stdout.strip() else {}

    def kill(self):
        """kill -9: the service stops without a word, its workloads keep running."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        kill_workload_processes(self.data_dir)


def kill_workload_processes(data_dir: pathlib.Path):
    """Workload processes outlive the service by design; tests must not leave any.
    Only processes still carrying their instance's marker are killed: pids are reused."""
    for record in (data_dir / "local-driver").glob("*.json"):
        data = json.loads(record.read_text())
        instance_id = data.get("instance_id")
        marker = f"COMPUTEARBITRAGE_INSTANCE_ID={instance_id}".encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) <= 1:
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(bytes(1)):
                        os.killpg(int(entry), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        # An instance's network namespace (the default as root) goes with it.
        namespace = (data.get("network") or {}).get("namespace")
        if namespace:
            subprocess.run(["ip", "netns", "del", namespace], stderr=subprocess.DEVNULL, check=False)


def free_port_block(size: int = 10) -> int:
    """The first of `size` consecutive ports that are free now."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            start = probe.getsockname()[1]
        if start + size > 65000:
            continue
        try:
            held = []
            for port in range(start, start + size):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for s in held:
                s.close()


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.fixture(scope="session")
def fixture_service(tmp_path_factory):
    service = Service(tmp_path_factory.mktemp("svc") / "fixture", FIXTURE_PRICES)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def workload_service(tmp_path_factory):
    """A service for workload tests, with fast health checks configured per workload."""
    service = Service(tmp_path_factory.mktemp("svc") / "workloads", None)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def isolated_service(tmp_path_factory):
    """A service with the default isolation: as root, every workload its own user."""
    service = Service(
        tmp_path_factory.mktemp("svc") / "isolated",
        None,
        extra_env={"COMPUTEARBITRAGE_WORKLOADS__LOCAL__RUN_AS": "per-workload"},
    )
    yield service
    service.stop()


@pytest.fixture(scope="session")
def full_service(tmp_path_factory):
    service = Service(tmp_path_factory.mktemp("svc") / "full", None)
    yield service
    service.stop()


@pytest.fixture(params=TERRAFORM_VERSIONS, ids=[f"tf{v}" for v in TERRAFORM_VERSIONS])
def terraform(request):
    path = TOOLS / f"terraform-{request.param}"
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/install-test-tools.sh")
    return path


class Workspace:
    """A Terraform working directory using the built provider through dev_overrides."""

    def __init__(self, directory: pathlib.Path, terraform: pathlib.Path, endpoint: str | None, token: str | None):
        self.dir = directory
        self.terraform = terraform
        cli_config = directory / "cli.tfrc"
        cli_config.write_text(
            "provider_installation {\n"
            f'  dev_overrides {{ "computearbitrage/computearbitrage" = "{BIN_DIR}" }}\n'
            "  direct {}\n"
            "}\n"
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "COMPUTEARBITRAGE_"))}
        self.env.update(
            TF_CLI_CONFIG_FILE=str(cli_config),
            TF_IN_AUTOMATION="1",
            TF_INPUT="0",
            CHECKPOINT_DISABLE="1",
            RUST_LIB_BACKTRACE="0",
            NO_COLOR="1",
        )
        if endpoint is not None:
            self.env["COMPUTEARBITRAGE_ENDPOINT"] = endpoint
        if token is not None:
            self.env["COMPUTEARBITRAGE_TOKEN"] = token

    def write(self, config: str, name: str = "main.tf"):
        header = (
            'terraform {\n  required_providers {\n'
            '    computearbitrage = { source = "computearbitrage/computearbitrage" }\n  }\n}\n'
        )
        (self.dir / name).write_text(header + config)

    def copy_in(self, path: pathlib.Path, name: str):
        shutil.copy(path, self.dir / name)

    def run(self, *args: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(self.terraform), *args, "-no-color"] if args[0] not in ("output", "version") else [str(self.terraform), *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"terraform {' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def apply(self):
        return self.run("apply", "-auto-approve")

    def outputs(self) -> dict:
        raw = json.loads(self.run("output", "-json").stdout)
        return {name: value["value"] for name, value in raw.items()}

    def plan_is_noop(self) -> bool:
        result = self.run("plan", "-detailed-exitcode", check=False)
        if result.returncode not in (0, 2):
            raise AssertionError(f"plan failed:\n{result.stdout}\n{result.stderr}")
        return result.returncode == 0


@pytest.fixture
def workload_for_service(tmp_path, terraform):
    """workload_for_service(service, directory=None) → a Workspace for that service."""

    def make(service, directory=None):
        path = directory or tmp_path / "main"
        path.mkdir(parents=True, exist_ok=True)
        return Workspace(path, terraform, service.endpoint, TOKEN)

    return make


@pytest.fixture
def workspace_for(tmp_path, terraform):
    """workspace_for(service) → a Workspace pointed at that service with the test token."""

    def make(service, endpoint=None, token=TOKEN):
        return Workspace(tmp_path, terraform, endpoint or (service.endpoint if service else None), token)

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
