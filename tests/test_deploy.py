"""deploy/ is checked like code: the Dockerfile linted, the manifests and the compose file validated against
their schemas, and the image's file set built as the Dockerfile builds it and run as api + worker + mock.

No Docker engine is needed: the build context is the repository filtered by the Dockerfile's own
.dockerignore (with docker-py's matcher, Docker's rules), the COPY lines of the build stage are replayed
into a temporary tree, and that tree is installed into a fresh virtualenv whose only other packages are
the dependencies this test session already has. The commands then run from an empty directory, as the
image runs them, so nothing can come from the repository by accident.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import site
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from docker.utils.build import exclude_paths
from openai import OpenAI

from tests.conftest import ROOT, RedisServer, free_port, wait_until

DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
BIN = Path(sys.executable).parent
# A database of its own on the session's Redis: the image's worker publishes its own agents there.
IMAGE_TEST_DB = 7


_IMAGE_KEY = "sk-ts-image-test-" + "0" * 43

def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing: install the dev extras (pip install -e '.[dev]')")
    return str(path)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=120)


# --- linters and schemas -------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    result = run(tool("hadolint"), "--no-color", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_pass_strict_validation() -> None:
    files = sorted((DEPLOY / "k8s").rglob("*.yaml"))
    result = run(tool("kubernetes-validate"), "--strict", *files)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    documents = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    # KEDA's ScaledObject is a custom resource and no schema ships for it; every other document must be validated.
    custom = [d for d in documents if d["apiVersion"].startswith("keda.sh/")]
    assert len(re.findall(r"passed for resource", output)) == len(documents) - len(custom), output
    skipped = [line for line in output.splitlines() if "Couldn't find schema" in line]
    assert len(skipped) == len(custom) and all("kind ScaledObject" in line for line in skipped), output


def test_compose_file_matches_the_compose_spec() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", DEPLOY / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# --- the image's file set, built and run ----------------------------------------------------------------


def build_context() -> set[str]:
    """The files `docker build -f deploy/Dockerfile .` sends: the repo filtered by deploy/Dockerfile.dockerignore."""
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return {p for p in exclude_paths(str(ROOT), patterns) if (ROOT / p).is_file()}


def build_stage_copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context, in order."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    copies = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words):
            paths = [w for w in words[1:] if not w.startswith("--")]
            copies.append((paths[:-1], paths[-1]))
    return copies


def replay_copies(context: set[str], tree: Path) -> None:
    for sources, dest in build_stage_copies():
        for source in sources:
            matched = [p for p in context if fnmatch.fnmatch(p.split("/")[0], source.rstrip("/"))]
            for path in matched:
                top = path.split("/")[0]
                if "/" in path:  # a directory source: its contents go to dest
                    target = tree / dest / path.split("/", 1)[1]
                else:
                    target = tree / dest / top if dest.endswith("/") else tree / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / path, target)


@dataclass
class Image:
    bin: Path  # the image's /opt/venv/bin
    build_output: str  # what `pip install` printed while building the package


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """A virtualenv holding what the image's /opt/venv holds."""
    root = tmp_path_factory.mktemp("image")
    tree, venv = root / "src", root / "venv"
    context = build_context()
    assert "pyproject.toml" in context and not any(p.startswith(("tests/", ".venv/", ".git/")) for p in context)
    replay_copies(context, tree)

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    purelib = Path(subprocess.check_output([venv / "bin" / "python", "-c", "import sysconfig; "
                                            "print(sysconfig.get_path('purelib'))"], text=True).strip())
    # The dependencies come from this session's environment, but not its editable checkout of this project.
    (purelib / "_image_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", tree],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return Image(venv / "bin", install.stdout + install.stderr)


def test_package_builds_without_packaging_warnings(image: Image) -> None:
    # Python warning categories (setuptools' BuildBackendWarning, SetuptoolsDeprecationWarning, ...), not
    # pip's own notes about this machine's package indexes.
    assert re.findall(r"\w+Warning\b.*", image.build_output) == []


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The image's empty working directory."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def test_image_imports_the_installed_package_not_the_repository(image: Image, home: Path) -> None:
    code = "import api, shared, worker; print('\\n'.join(m.__file__ for m in (api, shared, worker)))"
    result = subprocess.run([image.bin / "python", "-c", code], cwd=home, capture_output=True, text=True, check=True)
    paths = result.stdout.split()
    assert len(paths) == 3 and all(p.startswith(str(image.bin.parent)) for p in paths), paths


@pytest.fixture
def image_redis(redis_server: RedisServer) -> Iterator[str]:
    client = redis.Redis(port=redis_server.port, db=IMAGE_TEST_DB)
    client.flushdb()
    yield f"redis://127.0.0.1:{redis_server.port}/{IMAGE_TEST_DB}"
    client.flushdb()
    client.close()


def test_image_runs_api_worker_and_mock_with_a_mounted_agents_file(
    image: Image, home: Path, tmp_path: Path, image_redis: str
) -> None:
    readme = (ROOT / "README.md").read_text()
    agents = re.search(r"```python\n(# myagents\.py.*?)```", readme, re.S)
    assert agents is not None
    mounted = tmp_path / "mnt" / "myagents.py"  # what `-v ./myagents.py:/agents/myagents.py` puts in place
    mounted.parent.mkdir()
    mounted.write_text(agents.group(1))
    api_port, mock_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURNSTREAM_", "OPENAI_", "PYTHON"))}
    env.update(
        PYTHONUNBUFFERED="1",
        TURNSTREAM_PORT=str(api_port),
        TURNSTREAM_MOCK_PORT=str(mock_port),
        TURNSTREAM_REDIS_URL=image_redis,
        TURNSTREAM_QUEUE_NAME="turnstream:image-test",
        OPENAI_BASE_URL=f"http://127.0.0.1:{mock_port}/v1",
        TURNSTREAM_AGENTS=str(mounted),
        # Keys are required, as in production; this one is seeded the way a mounted Secret would seed it.
        TURNSTREAM_API_KEYS=json.dumps([{"project": "image-test", "secret": _IMAGE_KEY}]),
    )
    procs = {
        role: subprocess.Popen([image.bin / "turnstream", role], cwd=home, env=env, stdout=subprocess.DEVNULL,
                               stderr=(tmp_path / f"{role}.log").open("wb"))
        for role in ("mock", "worker", "api")
    }
    try:
        base = f"http://127.0.0.1:{api_port}/v1"

        def serving_support() -> bool:
            for proc in procs.values():
                assert proc.poll() is None, {r: (tmp_path / f"{r}.log").read_text() for r in procs}
            models = httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {_IMAGE_KEY}"}).json()["data"]
            return "support" in {m["id"] for m in models}

        wait_until(serving_support, 30, "the image's api, worker and mock")
        answer = OpenAI(base_url=base, api_key=_IMAGE_KEY, max_retries=0, timeout=30).responses.create(
            model="support", input="What is the weather in Paris?"
        )
        assert answer.status == "completed", answer.error
        assert "Paris: 21°C, clear" in answer.output_text
        # The playground's files are package data: the installed image serves them, not the repository.
        root = f"http://127.0.0.1:{api_port}"
        assert "<title>turnstream playground</title>" in httpx.get(f"{root}/").text
        assert httpx.get(f"{root}/playground/playground.js").status_code == 200
        assert httpx.get(f"{root}/readyz").json()["workers"]["live"] == 1
        # The liveness probe of compose and Kubernetes, run as they run it.
        wait_until(lambda: subprocess.run([image.bin / "turnstream", "worker", "--check"], cwd=home, env=env,
                                          capture_output=True).returncode == 0, 10, "a worker heartbeat")
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
