"""Benchmark of ``triplicate web`` with --clients clients in the state database.

Measured on a real ``triplicate web`` process, against the real alternatives in the same run:

1. idle: CPU share and resident memory over --seconds with no request.
2. scraped: the same with a GET /metrics every second (a Prometheus scrape).
   Against: the daemon's exporter (prometheus-client's own HTTP server over the
   same collectors, ``syncd --metrics-listen``) answering the same scrape.
3. pages: GET / (the grid of every client), the same right after a run was
   recorded (nothing cached can answer), GET /client/NAME and /api/v1/clients,
   --requests times each. Against: ``triplicate status --json`` (the CLI's view
   of every client), the way to see the same state without the web service.

The state database is filled through the state modules (no restic needed):
--snapshots snapshots a client, one a day, at the primary and two locations, a
run per snapshot and location, an audit and a restore check per client; one
location in 50 failing.

Usage: .venv/bin/python bench/bench_web.py [--clients 1000] [--seconds 60] [--requests 20]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from triplicate.state.audit import AuditRecord, AuditState, LocationAuditRecord  # noqa: E402
from triplicate.state.db import PRIMARY  # noqa: E402
from triplicate.state.replication import ReplicationState, RunRecord  # noqa: E402
from triplicate.state.restore_check import RestoreCheckRecord, RestoreCheckState  # noqa: E402

LOCATIONS = ("usb", "nas")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(root: Path, clients: int, port: int) -> Path:
    lines = [f'[server]\nstate_dir = "{root}/state"\nrepos_dir = "{root}/repos"\n']
    for location in LOCATIONS:
        lines.append(f'[locations.{location}]\ntype = "local"\npath = "{root}/{location}"\n')
    for index in range(clients):
        lines.append(f'[clients.client{index:04d}]\nreplicate_to = ["usb", "nas"]\n')
    lines.append(f'[web]\nlisten = "127.0.0.1:{port}"\n')
    path = root / "triplicate.toml"
    path.write_text("\n".join(lines))
    return path


def fill_state(state_dir: Path, clients: int, snapshots: int) -> None:
    now = time.time()
    replication = ReplicationState(state_dir)
    audits = AuditState(state_dir)
    restore = RestoreCheckState(state_dir)
    for index in range(clients):
        client = f"client{index:04d}"
        present: set[str] = set()
        for day in range(snapshots):
            when = now - (snapshots - day) * 86400
            present.add(f"{index:08x}{day:056x}")
            replication.record_snapshots(client, PRIMARY, set(present), when)
            for location in LOCATIONS:
                failing = location == "usb" and index % 50 == 0 and day == snapshots - 1
                if not failing:
                    replication.record_snapshots(client, location, set(present), when + 30)
                replication.record_run(RunRecord(client, location, "event", when + 1, when + 30, not failing,
                                                 6, 5_000_000, 0, [], "disk gone" if failing else None))
        audits.record_audit(AuditRecord(client, now - 600, now - 590, "OK", "", {"status": "OK"},
                                        {location: LocationAuditRecord("OK", "", {"status": "OK"})
                                         for location in LOCATIONS}))
        restore.record(RestoreCheckRecord(client, "usb", now - 3600, True, "x" * 64, 20, 1000, 2.0, 500.0, 10.0, []))
    for store in (replication, audits, restore):
        store.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def get(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        size = len(response.read())
    return time.perf_counter() - started, size


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def window(pid: int, seconds: float, url: str | None) -> dict[str, float]:
    """CPU share and memory of ``pid`` over ``seconds``, scraping ``url`` every second when given."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    latencies = []
    while time.monotonic() - start < seconds:
        tick = time.monotonic()
        if url is not None:
            latencies.append(get(url)[0])
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    elapsed = time.monotonic() - start
    rss, hwm = memory(pid)
    result = {"cpu_percent": 100 * (cpu_seconds(pid) - start_cpu) / elapsed, "rss_mb": rss, "peak_rss_mb": hwm}
    if latencies:
        result["scrape_p50_s"] = statistics.median(latencies)
        result["scrape_max_s"] = max(latencies)
    return result


def timed(url: str, requests: int) -> dict[str, float]:
    samples = [get(url) for _ in range(requests)]
    times = sorted(sample[0] for sample in samples)
    return {"p50_s": statistics.median(times), "p95_s": times[int(0.95 * (len(times) - 1))],
            "bytes": samples[0][1]}


def after_change(state_dir: Path, url: str, requests: int) -> dict[str, float]:
    """GET ``url`` right after a replication run was recorded (the cache cannot answer): the worst case."""
    replication = ReplicationState(state_dir)
    times = []
    try:
        for index in range(requests):
            now = time.time()
            replication.record_run(RunRecord(f"client{index:04d}", "nas", "event", now, now, True, 0, 0, 0, [], None))
            times.append(get(url)[0])
    finally:
        replication.close()
    times.sort()
    return {"p50_s": statistics.median(times), "p95_s": times[int(0.95 * (len(times) - 1))]}


def exporter_scrape(config_path: Path, requests: int) -> dict[str, float]:
    """The daemon's exporter (prometheus-client's HTTP server) over the same collectors, scraped."""
    from triplicate.config.load import load_config
    from triplicate.metrics import ChecksCollector, ReplicationCollector, serve

    config = load_config(config_path)
    pairs = [(name, location) for name, client in sorted(config.clients.items()) for location in client.replicate_to]
    port = free_port()
    collector = ReplicationCollector(config.server.state_dir, lambda: pairs, lambda client, location: 0)
    server = serve(f"127.0.0.1:{port}", collector,
                   ChecksCollector(config.server.state_dir, lambda: sorted(config.clients)))
    try:
        return timed(f"http://127.0.0.1:{port}/metrics", requests)
    finally:
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--snapshots", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--requests", type=int, default=20)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-web-") as folder:
        root = Path(folder)
        port = free_port()
        config_path = write_config(root, arguments.clients, port)
        started = time.monotonic()
        fill_state(root / "state", arguments.clients, arguments.snapshots)
        print(f"filled the state database in {time.monotonic() - started:.0f}s "
              f"({(root / 'state' / 'state.db').stat().st_size / 1e6:.0f} MB)", file=sys.stderr)
        process = subprocess.Popen([sys.executable, "-m", "triplicate", "-c", str(config_path), "web"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            base = f"http://127.0.0.1:{port}"
            get(base + "/metrics")  # warm: imports, first connection
            results: dict[str, object] = {"clients": arguments.clients}
            results["idle"] = window(process.pid, arguments.seconds, None)
            results["scraped_every_second"] = window(process.pid, arguments.seconds, base + "/metrics")
            results["metrics"] = timed(base + "/metrics", arguments.requests)
            results["exporter_metrics"] = exporter_scrape(config_path, arguments.requests)
            results["dashboard"] = timed(base + "/", arguments.requests)
            results["dashboard_after_a_change"] = after_change(root / "state", base + "/", arguments.requests)
            results["client_page"] = timed(base + "/client/client0000", arguments.requests)
            results["api_clients"] = timed(base + "/api/v1/clients", arguments.requests)
            status_times = []
            for _ in range(max(3, arguments.requests // 4)):
                begun = time.perf_counter()
                subprocess.run([sys.executable, "-m", "triplicate", "-c", str(config_path), "status", "--json"],
                               capture_output=True, check=False)
                status_times.append(time.perf_counter() - begun)
            results["cli_status_json"] = {"p50_s": statistics.median(status_times)}
            results["after"] = dict(zip(("rss_mb", "peak_rss_mb"), memory(process.pid), strict=True))
        finally:
            process.terminate()
            process.wait(timeout=30)
    dashboard = results["dashboard"]["p50_s"]  # type: ignore[index]
    results["ratios"] = {
        "cli_status_over_dashboard": results["cli_status_json"]["p50_s"] / dashboard,  # type: ignore[index]
        "web_metrics_over_exporter": results["metrics"]["p50_s"] / results["exporter_metrics"]["p50_s"],  # type: ignore[index]
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
