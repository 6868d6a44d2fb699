"""Parts of bench_endpoint.py: a shared endpoint's memory with many idle clients, and the
announcement latency. Run through ``bench/bench_endpoint.py --idle-clients N`` or ``--announce N``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

TRIPLICATE = [sys.executable, "-m", "triplicate"]


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1."""
    for _ in range(200):
        low = random.randrange(20000, 60000 - count)
        if all(_port_free(port) for port in range(low, low + count)):
            return low
    raise RuntimeError("no free port range")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _site(root: Path, clients: int, mode: str) -> tuple[Path, int, dict[str, str]]:
    """A configuration with ``clients`` clients (each its port, htpasswd and repository folder)."""
    from triplicate.service import htpasswd

    low = _free_ports(clients)
    lines = [f'[server]\nstate_dir = "{root}/state"\nrepos_dir = "{root}/repos"\nlisten_host = "127.0.0.1"\n'
             f'public_host = "127.0.0.1"\nports = "{low}-{low + clients - 1}"\nendpoint = "{mode}"\n']
    passwords = {}
    (root / "state" / "htpasswd").mkdir(parents=True)
    for index in range(clients):
        name = f"c{index:04d}"
        lines.append(f"[clients.{name}]\nport = {low + index}\n")
        passwords[name] = htpasswd.generate_password()
        htpasswd.write_file(root / "state" / "htpasswd" / name, name, passwords[name])
        (root / "repos" / name).mkdir(parents=True)
    config = root / "triplicate.toml"
    config.write_text("\n".join(lines))
    return config, low, passwords


def _raise_file_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _serve(config: Path, *clients: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = config.parent / f"serve-{len(clients)}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([*TRIPLICATE, "-c", str(config), "serve", *clients], stdout=output,
                                   stderr=output, stdin=subprocess.DEVNULL, preexec_fn=_raise_file_limit)
    return process, log


def _wait_serving(process: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> float:
    started = time.monotonic()
    while "serving " not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() - started > timeout:
            raise RuntimeError(f"the endpoint did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    return time.monotonic() - started


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def idle_clients_memory(count: int) -> int:
    """Print the RSS of one shared endpoint serving ``count`` idle clients, and of single ones."""
    root = Path(tempfile.mkdtemp(prefix="triplicate-bench-idle-"))
    try:
        config, low, _ = _site(root, count, "shared")
        process, log = _serve(config)
        took = _wait_serving(process, log)
        time.sleep(2)
        shared = _rss_kb(process.pid)
        listening = sum(1 for port in range(low, low + count) if not _port_free(port))
        process.terminate()
        process.wait()
        singles = [_serve(config, f"c{index:04d}") for index in range(PROCESSES)]
        for single, single_log in singles:
            _wait_serving(single, single_log)
        time.sleep(2)
        one = _rss_kb(singles[0][0].pid)
        ours_pss = sum(_pss_kb(single.pid) for single, _ in singles) // PROCESSES
        for single, _ in singles:
            single.terminate()
            single.wait()
        rclone_kb, rclone_pss = _rclone_rss(root)
        print("\n## Memory of the endpoint, idle (kB of RSS)\n")
        print("| process | clients | RSS kB | per client kB |")
        print("|---|---:|---:|---:|")
        print(f"| triplicate serve (shared) | {count} ({listening} ports listening, up in {took:.1f}s) | "
              f"{shared} | {(shared - one) / max(count - 1, 1):.0f} (above the first) |")
        print(f"| triplicate serve CLIENT (per-client mode) | 1 | {one} | {one} |")
        print(f"| rclone serve restic (one per client) | 1 | {rclone_kb} | {rclone_kb} |")
        print(f"\nProportional set size (shared pages split between processes), {PROCESSES} processes of each: "
              f"triplicate serve CLIENT {ours_pss} kB per process, rclone serve restic {rclone_pss} kB per process")
        print(f"\n{count} clients: shared {shared / 1024:.0f} MB in all; per-client mode "
              f"{one * count / 1024 / 1024:.1f} GB; rclone {rclone_kb * count / 1024 / 1024:.1f} GB")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


PROCESSES = 5  # per-client processes started at once, for the proportional set size


def _pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _rclone_rss(root: Path) -> tuple[int, int]:
    """RSS of one ``rclone serve restic`` and the mean PSS of PROCESSES of them, in kB."""
    processes = [subprocess.Popen(
        ["rclone", "--config", "/dev/null", "serve", "restic", "--append-only", "--private-repos",
         "--cache-objects=false", "--htpasswd", str(root / "state" / "htpasswd" / f"c{index:04d}"),
         "--addr", f"127.0.0.1:{_free_ports(1)}", str(root / "repos")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for index in range(PROCESSES)]
    time.sleep(3)
    rss = _rss_kb(processes[0].pid)
    pss = sum(_pss_kb(process.pid) for process in processes) // PROCESSES
    for process in processes:
        process.terminate()
        process.wait()
    return rss, pss


def announcement_latency(uploads: int) -> int:
    """Print how long after a snapshot upload's answer the watcher's socket is told."""
    from triplicate.daemon.announce import AnnouncementListener

    root = Path(tempfile.mkdtemp(prefix="triplicate-bench-announce-"))
    try:
        config, low, passwords = _site(root, 1, "per-client")
        told = threading.Event()
        told_at: list[float] = []

        def on_snapshot(client: str, trigger: str) -> None:
            told_at.append(time.perf_counter())
            told.set()

        loop = asyncio.new_event_loop()
        listener = AnnouncementListener(on_snapshot)
        ready = threading.Event()

        def bind() -> None:
            listener.set_clients(root / "state", ["c0000"])
            ready.set()

        def run_loop() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(bind)
            loop.run_forever()

        thread = threading.Thread(target=run_loop, daemon=True)
        thread.start()
        ready.wait()
        process, log = _serve(config, "c0000")
        _wait_serving(process, log)
        token = base64.b64encode(f"c0000:{passwords['c0000']}".encode()).decode()
        connection = http.client.HTTPConnection("127.0.0.1", low, timeout=10)
        connection.request("POST", "/c0000/?create=true", headers={"Authorization": f"Basic {token}"})
        connection.getresponse().read()
        after_answer, after_send = [], []
        for _ in range(uploads):
            body = os.urandom(400)
            told.clear()
            sent = time.perf_counter()
            connection.request("POST", f"/c0000/snapshots/{hashlib.sha256(body).hexdigest()}", body=body,
                               headers={"Authorization": f"Basic {token}"})
            response = connection.getresponse()
            response.read()
            answered = time.perf_counter()
            if response.status != 200 or not told.wait(5):
                raise RuntimeError(f"upload answered {response.status}, told: {told.is_set()}")
            after_answer.append((told_at[-1] - answered) * 1000)
            after_send.append((told_at[-1] - sent) * 1000)
        process.terminate()
        process.wait()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        after_answer.sort()
        after_send.sort()
        print(f"\n## Announcement latency, {uploads} snapshot uploads (ms)\n")
        print("| measured from | median | 95th percentile | max |")
        print("|---|---:|---:|---:|")
        for name, values in (("the upload's 200 answer (negative: told before it)", after_answer),
                             ("the upload's start (request sent; includes fsyncs)", after_send)):
            print(f"| {name} | {median(values):.2f} | {values[int(len(values) * 0.95) - 1]:.2f} | "
                  f"{values[-1]:.2f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0
