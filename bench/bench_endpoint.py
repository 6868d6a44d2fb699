#!/usr/bin/env python3
"""A backup through triplicate's endpoint, through ``rclone serve restic`` and to a local folder.

Sets up a triplicate server in a temporary folder (init, ``client add``,
supervision with runsvdir: the client's endpoint is ``triplicate serve``), starts
``rclone serve restic`` for the same client on a second port (the flags the
service tree gives it with endpoint_program = "rclone"), then times, in the same
run and interleaved round by round (each on a fresh repository, prepared untimed):

  local folder:  restic backup DATA into a local folder (restic fsyncs every file)
  triplicate:    the same through our endpoint (verifies and fsyncs every file)
  rclone:        the same through rclone serve restic (never fsyncs)
  rclone + sync -f: rclone, then syncfs of the served folder (a like-for-like durable write)

and reports the ratios, plus the CPU time of restic and of each endpoint (far less
sensitive than wall time to a busy machine), per GB uploaded. Also reports the
resident memory of one client's services, idle and after the backups, and of
rclone beside it. The benchmark client has no locations, so its watcher does not
replicate while the next backup is timed: this measures the endpoints.

``--idle-clients N`` measures instead the memory of one shared endpoint process
(``triplicate serve`` with server.endpoint = "shared") serving N idle clients,
each on its own port, and of a per-client ``triplicate serve CLIENT`` process.
``--announce N`` measures the time from a snapshot upload's answer to the
watcher's socket being told (N uploads).

    .venv/bin/python bench/bench_endpoint.py [--size-mb 256] [--runs 5] [--syncd shared]
    .venv/bin/python bench/bench_endpoint.py --idle-clients 1000
    .venv/bin/python bench/bench_endpoint.py --announce 200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

TRIPLICATE = [sys.executable, "-m", "triplicate"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=256, help="data to back up, in MB [256]")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds [5]")
    parser.add_argument("--syncd", choices=("per-client", "shared"), default="per-client",
                        help="server.syncd: one watcher per client, or one for all [per-client]")
    parser.add_argument("--idle-clients", type=int, default=0, metavar="N",
                        help="only measure the memory of a shared endpoint serving N idle clients")
    parser.add_argument("--announce", type=int, default=0, metavar="N",
                        help="only measure the announcement latency over N snapshot uploads")
    arguments = parser.parse_args()
    if arguments.idle_clients:
        from bench_endpoint_memory import idle_clients_memory

        return idle_clients_memory(arguments.idle_clients)
    if arguments.announce:
        from bench_endpoint_memory import announcement_latency

        return announcement_latency(arguments.announce)
    for program in ("restic", "rclone", "runsvdir"):
        if shutil.which(program) is None:
            print(f"{program} is needed", file=sys.stderr)
            return 3
    root = Path(tempfile.mkdtemp(prefix="triplicate-bench-"))
    supervisor = None
    try:
        config = set_up_server(root, arguments.syncd)
        supervisor = subprocess.Popen([*TRIPLICATE, "-c", str(config), "supervise"], stdin=subprocess.DEVNULL)
        added = json.loads(triplicate(config, "client", "add", "bench", "--json"))
        wait_for_endpoint(root, "bench")
        make_data(root / "data", arguments.size_mb)  # (also gives the watcher time to settle)
        rclone = start_rclone(root, config)
        rclone_url = str(added["url"]).rsplit(":", 1)[0] + f":{rclone[1]}/bench/"
        wait_for_port(rclone[1])
        time.sleep(3)  # idle: as long as the supervised services had
        idle = service_memory(root / "state", "bench", rclone[0].pid)
        endpoint_pid = _pid(root / "state" / "clients" / "bench" / "services" / "rest")
        samples = time_backups(root, added["url"], rclone_url, arguments.runs, endpoint_pid, rclone[0].pid)
        busy = service_memory(root / "state", "bench", rclone[0].pid)
        report(arguments, samples, idle, busy)
        rclone[0].terminate()
        rclone[0].wait()
    finally:
        if supervisor is not None:
            subprocess.run([*TRIPLICATE, "-c", str(root / "triplicate.toml"), "supervise", "--stop"], check=False)
            supervisor.wait()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def triplicate(config: Path, *args: str) -> str:
    return subprocess.run([*TRIPLICATE, "-c", str(config), *args], check=True, capture_output=True,
                          text=True).stdout


def init_server(root: Path) -> Path:
    """``triplicate init`` in ``root`` on loopback, with one free port for a client; returns the
    configuration file."""
    import socket

    with socket.socket() as probe:  # a port the kernel says is free
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = root / "triplicate.toml"
    subprocess.run([*TRIPLICATE, "-c", str(config), "init", "--state-dir", str(root / "state"),
                    "--repos-dir", str(root / "repos"), "--listen-host", "127.0.0.1",
                    "--public-host", "127.0.0.1", "--ports", f"{port}-{port}"], check=True, capture_output=True)
    return config


def set_up_server(root: Path, syncd: str) -> Path:
    config = init_server(root)
    config.write_text(config.read_text().replace("[server]\n", f'[server]\nsyncd = "{syncd}"\n'))
    (root / "password").write_text("benchmark\n")
    return config


def start_rclone(root: Path, config: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``rclone serve restic`` for the client bench, as the service tree runs it, on another free port."""
    import socket

    from triplicate.config.load import load_config
    from triplicate.service.scripts import Programs, rest_command

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = load_config(config)
    settings = settings.model_copy(update={
        "server": settings.server.model_copy(update={"endpoint_program": "rclone"}),
        "clients": {"bench": settings.clients["bench"].model_copy(update={"port": port})},
    })
    argv = rest_command(settings, config, "bench", Programs.find())
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL), port


def wait_for_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def wait_for_endpoint(root: Path, client: str) -> None:
    """Until both services have run for 3 s: rclone listens, the watcher has started up."""
    from triplicate.service.runit import service_state

    services = root / "state" / "clients" / client / "services"
    watcher = services / "syncd" if (services / "syncd").is_dir() else root / "state" / "shared" / "syncd"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [service_state(services / "rest"), service_state(watcher)]
        if all(state.running and state.seconds(time.time()) >= 3 for state in states):  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError("the services did not start")


def make_data(folder: Path, size_mb: int) -> None:
    """Mostly incompressible data: a few large files and many small ones, as a server's /etc + /var."""
    folder.mkdir()
    large = size_mb * 9 // 10
    for index in range(max(1, large // 32)):
        (folder / f"large-{index}.bin").write_bytes(os.urandom(32 << 20))
    small = folder / "small"
    small.mkdir()
    for index in range(max(1, (size_mb - large) * 1024 // 64)):
        (small / f"file-{index}.txt").write_bytes(os.urandom(32 << 10) + b"text\n" * 6500)


def time_backups(root: Path, url: str, rclone_url: str, runs: int, endpoint_pid: int,
                 rclone_pid: int) -> dict[str, list[dict[str, float]]]:
    """Interleaved rounds: each round backs up once per variant, in rotating order.

    Interleaving spreads the load of a busy machine over every variant alike (runs of
    one variant after the other would not). Returns, per variant, one sample per
    round: wall seconds, the restic client's CPU seconds, the endpoint's CPU seconds.
    """
    local = root / "local-repo"
    served = root / "repos" / "bench"
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESTIC_")}
    env.update(RESTIC_PASSWORD_FILE=str(root / "password"), BENCH_URL=url, RCLONE_URL=rclone_url)
    data = root / "data"
    restic = "restic --no-cache -q"
    # Emptying the served folder from the server side: the endpoint itself is append-only.
    fresh_served = f'find {served} -mindepth 1 -delete && {restic} -r "$BENCH_URL" init'
    variants = {
        "local folder": (f"rm -rf {local} && {restic} -r {local} init", f"{restic} -r {local} backup {data}"),
        "triplicate endpoint": (fresh_served, f'{restic} -r "$BENCH_URL" backup {data}'),
        "rclone serve restic": (fresh_served, f'{restic} -r "$RCLONE_URL" backup {data}'),
        # rclone never fsyncs (restic's local backend and ours do): the same, made durable by syncfs.
        "rclone serve restic + sync -f": (fresh_served,
                                          f'{restic} -r "$RCLONE_URL" backup {data} && sync -f {served}'),
    }
    server_pids = {"local folder": None, "triplicate endpoint": endpoint_pid, "rclone serve restic": rclone_pid,
                   "rclone serve restic + sync -f": rclone_pid}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    names = list(variants)
    for round_number in range(runs + 1):  # round 0 warms the page cache and is dropped
        order = names[round_number % len(names):] + names[:round_number % len(names)]
        for name in order:
            prepare, command = variants[name]
            subprocess.run(prepare, shell=True, check=True, env=env)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            server_pid = server_pids[name]
            server_before = _cpu_seconds(server_pid) if server_pid else 0.0
            started = time.monotonic()
            subprocess.run(command, shell=True, check=True, env=env)
            wall = time.monotonic() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if round_number:
                samples[name].append({
                    "wall": wall,
                    "client_cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                    "server_cpu": (_cpu_seconds(server_pid) - server_before) if server_pid else 0.0,
                })
        print(f"round {round_number}/{runs} done", file=sys.stderr)
    return samples


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_memory(state: Path, client: str, rclone_pid: int) -> dict[str, dict[str, int]]:
    """VmRSS and VmHWM (peak) in kB of each process of the client's service tree, and of rclone beside it."""
    client_dir = state / "clients" / client
    shared = state / "shared" / "syncd"
    services = {"triplicate serve (the endpoint)": _pid(client_dir / "services" / "rest"),
                "rclone serve restic (for comparison, not in the tree)": rclone_pid}
    if shared.is_dir():  # its runsv and svlogd are not the client's: counted apart
        services["syncd (shared by all clients)"] = _pid(shared)
    else:
        services["syncd"] = _pid(client_dir / "services" / "syncd")
    memory = {name: _memory(pid) for name, pid in services.items()}
    runit = {"VmRSS": 0, "VmHWM": 0}
    others = set(_processes_under(client_dir) + _processes_under(state / "log" / client)) - set(services.values())
    others = {pid for pid in others if "rclone" not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")}
    for process in others:
        for key, value in _memory(process).items():
            runit[key] += value
    memory[f"runit: runsvdir, runsv, svlogd ({len(others)} processes)"] = runit
    return memory


def _pid(service: Path) -> int:
    return int((service / "supervise" / "pid").read_text().strip())


def _memory(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def _processes_under(folder: Path) -> list[int]:
    """Processes working in, or naming, ``folder`` (runsv works inside its service folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(folder) in cmdline or cwd.startswith(str(folder)):
            found.append(int(entry.name))
    return found


def report(arguments: argparse.Namespace, samples: dict[str, list[dict[str, float]]],
           idle: dict[str, dict[str, int]], busy: dict[str, dict[str, int]]) -> None:
    print(f"\n## Backup of {arguments.size_mb} MB, {arguments.runs} interleaved rounds (syncd = {arguments.syncd})\n")
    print("| target | median s | min s | max s | restic CPU s (median) | endpoint CPU s (median) "
          "| endpoint CPU s per GB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    gigabytes = arguments.size_mb / 1000
    for name, runs in samples.items():
        walls = [sample["wall"] for sample in runs]
        server = median(sample["server_cpu"] for sample in runs)
        print(f"| {name} | {median(walls):.2f} | {min(walls):.2f} | {max(walls):.2f} | "
              f"{median(sample['client_cpu'] for sample in runs):.2f} | {server:.2f} | {server / gigabytes:.2f} |")
    print()
    for name, base in (("triplicate endpoint", "local folder"), ("triplicate endpoint", "rclone serve restic"),
                       ("triplicate endpoint", "rclone serve restic + sync -f"),
                       ("rclone serve restic", "local folder")):
        per_round = [sample["wall"] / other["wall"] for sample, other in zip(samples[name], samples[base], strict=True)]
        walls, base_walls = [s["wall"] for s in samples[name]], [s["wall"] for s in samples[base]]
        print(f"{name} / {base}: {median(per_round):.3f} (median of per-round ratios), "
              f"{min(walls) / min(base_walls):.3f} (best against best)")
    print("\n## Memory of one client's services (kB)\n")
    print("| process | RSS idle | RSS after backups | peak RSS |")
    print("|---|---:|---:|---:|")
    for name in idle:
        print(f"| {name} | {idle[name]['VmRSS']} | {busy[name]['VmRSS']} | {busy[name]['VmHWM']} |")


if __name__ == "__main__":
    sys.exit(main())
