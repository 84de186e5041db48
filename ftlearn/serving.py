"""Serving a saved model over an OpenAI-compatible API with `transformers serve` (10_deployment).

`Server` starts `transformers serve FOLDER` on a loopback port as a child process, waits for its
`/health`, and stops it on `stop()` or when its `with` block ends, so that nothing is left running.
Clients are the `openai` package's, pointed at `http://127.0.0.1:PORT/v1`: the code a learner
would write against any hosted API. A pinned server (a folder given) answers for that model only.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"  # loopback only: nothing outside this machine can reach the server


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something accepts connections on the port."""
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child, before it runs: on Linux, ask the kernel to stop it when its parent dies (a killed notebook kernel)."""
    if sys.platform == "linux":
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _command() -> list[str]:
    exe = Path(sys.executable).with_name("transformers")
    if exe.exists():
        return [str(exe), "serve"]
    if shutil.which("transformers"):
        return [shutil.which("transformers"), "serve"]
    raise FileNotFoundError("the `transformers` command is not installed next to this Python: `pip install 'transformers[serving]'`.")


class Server:
    """`transformers serve` for one saved model folder, on a loopback port; a context manager."""

    def __init__(self, folder: str | Path, port: int | None = None, threads: int = 1, log: str | Path | None = None):
        self.folder = Path(folder).resolve()
        if not (self.folder / "config.json").is_file():
            raise FileNotFoundError(f"{self.folder}: no config.json; save the model there first (deploy.save_complete).")
        self.port = port or free_port()
        if listening(self.port):
            raise OSError(f"port {self.port} on {HOST} is already in use: stop what listens there, or pass port=None for a free one.")
        self.log_path = Path(log or self.folder.parent / f"serve-{self.port}.log")
        self.threads, self.proc, self.started_s, self.launched = threads, None, None, 0.0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def launch(self) -> Server:
        """Start the server process and return at once (`wait_ready` waits for it): it loads while you work."""
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        cmd = [*_command(), str(self.folder), "--host", HOST, "--port", str(self.port), "--device", "cpu", "--log-level", "warning"]
        self.launched = time.time()
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        atexit.register(self.stop)  # and the kernel's exit stops it, should a cell fail before stop()
        return self

    def wait_ready(self, timeout: float = 120) -> Server:
        """Wait up to `timeout` s from now until /health answers (the error quotes the server's log if it never does)."""
        waited = time.time()
        while time.time() - waited < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with code {self.proc.returncode} before answering; "
                                   f"its log, {self.log_path.name}, ends:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        self.started_s = time.time() - self.launched
                        return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"transformers serve gave no /health in {timeout:.0f} s on port {self.port}; "
                           f"raise timeout= on a slow machine. Its log ends:\n{self.tail()}")

    def start(self, timeout: float = 120) -> Server:
        """Launch and wait: the server answers when this returns."""
        return self.launch().wait_ready(timeout)

    def tail(self, lines: int = 8) -> str:
        text = self.log_path.read_text(errors="replace").strip() if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "(empty: it was still starting)"

    def models(self) -> list[str]:
        """The model ids the server lists at /v1/models."""
        with urllib.request.urlopen(f"{self.url}/models", timeout=5) as r:
            return [m["id"] for m in json.loads(r.read())["data"]]

    def stop(self) -> int | None:
        """Terminate the server (kill after 10 s); returns its exit code. Safe to call twice."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Server:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def ask(client, model: str, messages: list[dict], max_tokens: int = 32) -> str:
    """One greedy chat completion (temperature 0: transformers serve then does not sample)."""
    reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens)
    return reply.choices[0].message.content
