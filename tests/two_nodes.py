"""Two torchrun agents on loopback acting as two nodes (`--nnodes 2`, c10d rendezvous, one CPU
process each), and a worker killed on one of them. Used by tests/test_two_nodes.py; run by hand to
repeat the kill-and-resume scenario many times, both orderings of the agents' race:

    python tests/two_nodes.py --runs 10

When a worker dies, the other node's agent restarts its own worker either because that worker
failed too (on its dead peer: a counted restart, TORCHELASTIC_RESTART_COUNT=1) or because it saw
the dead worker's agent waiting for a new rendezvous round first (a membership change, which torch
elastic does not count: TORCHELASTIC_RESTART_COUNT stays 0). Which comes first is a race; each
`ordering` below forces one outcome with SIGSTOP/SIGCONT:

- "membership": the other worker is stopped before the kill, so it cannot fail; its agent sees it
  healthy and a node waiting, and stops it for the membership change (SIGTERM, pending while the
  worker is stopped; then it is let go).
- "failure": the killed worker's agent is stopped before the kill, so it cannot announce the new
  round; the other worker fails on its dead peer and its agent counts a restart; then the stopped
  agent is let go and counts its own. (The stopped agent is node 1's: node 0's hosts the rendezvous
  store, which the other agent must keep reaching.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agents(args: list, logs: Path, max_restarts: int = 0) -> list[subprocess.Popen]:
    """Two agents, each `torchrun --nnodes 2 --nproc_per_node 1 ... ARGS`; output in LOGS/node{i}.log."""
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"two-nodes-{port}",
               "--max-restarts", str(max_restarts), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    logs.mkdir(parents=True, exist_ok=True)
    agents = []
    for node in range(2):
        with open(logs / f"node{node}.log", "w") as log:  # the child keeps its own descriptor
            # a session of its own, so that a failed test can end the agent and its workers together
            agents.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))
        if node == 0:  # node 0's agent, alone, binds the endpoint: it hosts the rendezvous store
            wait_for(lambda: agents[0].poll() is not None or listening(port), time.monotonic() + 120,
                     "the first agent's rendezvous store")
    return agents


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def end_agents(agents: list[subprocess.Popen]) -> None:
    for agent in agents:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()


def wait_agents(agents: list[subprocess.Popen], deadline: float) -> list[int]:
    codes = []
    for agent in agents:
        codes.append(agent.wait(timeout=max(deadline - time.monotonic(), 1)))
    return codes


def worker_pids(agent_pid: int) -> list[int]:
    children = Path(f"/proc/{agent_pid}/task/{agent_pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def worker_env(pid: int, deadline: float) -> dict[str, str]:
    """The environment torchrun gave worker `pid` (right after the fork it still has the agent's);
    {"exited": ...} if it ended before it could be read."""
    def read():
        try:
            entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            return {"exited": str(pid)}
        env = dict(e.decode().split("=", 1) for e in entries if b"=" in e)
        return env if "TORCHELASTIC_RESTART_COUNT" in env else None
    return wait_for(read, deadline, f"worker {pid}'s environment")


def signal_pending(pid: int, signum: int) -> bool:
    """Is `signum` waiting to be delivered to process `pid` (e.g. while it is stopped)?"""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def wait_for(condition, deadline: float, what: str, interval: float = 0.02):
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)
    return result


def one_worker_each(agents: list[subprocess.Popen], deadline: float, not_in: tuple = ()) -> list[int]:
    """The single worker of each agent (other than `not_in`), once both have one."""
    def current():
        pids = [worker_pids(a.pid) for a in agents]
        if all(len(p) == 1 and p[0] not in not_in for p in pids):
            return [p[0] for p in pids]
        return None
    return wait_for(current, deadline, "a worker on each node")


@dataclass
class KillOutcome:
    codes: list[int]  # the agents' exit codes
    logs: list[str]  # each node's output
    rank_before: list[int]  # global rank of each node's worker before the kill
    victim: int  # the node whose worker was killed
    restart_counts: list[int]  # TORCHELASTIC_RESTART_COUNT of each node's restarted worker (-1: ended unseen)


def kill_and_resume(train_args: list, out: Path, logs: Path, ordering: str, timeout: float = 300) -> KillOutcome:
    """Train under two agents (--max-restarts 2), SIGKILL one worker once OUT/last.pt exists, with
    the agents' race forced as `ordering` says; return when both agents have ended."""
    deadline = time.monotonic() + timeout
    agents = start_agents(train_args, logs, max_restarts=2)
    try:
        wait_for(lambda: (out / "last.pt").exists() or any(a.poll() is not None for a in agents), deadline,
                 "the first checkpoint", interval=0.05)
        assert all(a.poll() is None for a in agents), "an agent ended before the first checkpoint"
        before = one_worker_each(agents, deadline)
        ranks = [int(worker_env(pid, deadline).get("RANK", -1)) for pid in before]
        # "membership": rank 1's worker, not the writer (a kill mid-write would leave a stray .tmp
        # in OUT). "failure": node 1's, as its agent is stopped and must not be the one that hosts
        # the rendezvous store (node 0's), or the other agent would wait on it too.
        victim = ranks.index(1) if ordering == "membership" else 1
        survivor = 1 - victim
        if ordering == "membership":
            os.kill(before[survivor], signal.SIGSTOP)
            os.kill(before[victim], signal.SIGKILL)
            wait_for(lambda: signal_pending(before[survivor], signal.SIGTERM), deadline,
                     "the other agent to stop its worker for the membership change")
            os.kill(before[survivor], signal.SIGCONT)
        elif ordering == "failure":
            os.kill(agents[victim].pid, signal.SIGSTOP)
            os.kill(before[victim], signal.SIGKILL)
            # gone from the children: its agent has reaped it, so it saw the failure and counts it
            wait_for(lambda: before[survivor] not in worker_pids(agents[survivor].pid), deadline,
                     "the other worker to fail on its dead peer")
            os.kill(agents[victim].pid, signal.SIGCONT)
        else:
            raise ValueError(f"ordering must be membership or failure, got {ordering!r}")
        after = one_worker_each(agents, deadline, not_in=tuple(before))
        counts = [int(worker_env(pid, deadline).get("TORCHELASTIC_RESTART_COUNT", -1)) for pid in after]
        codes = wait_agents(agents, deadline)
    finally:
        end_agents(agents)
    texts = [(logs / f"node{node}.log").read_text(errors="replace") for node in range(2)]
    return KillOutcome(codes, texts, ranks, victim, counts)


def train_command(data: dict, out: Path, epochs: int) -> list:
    return ["-m", "alexnet_dali", "train", data["data"], "--labels", data["labels"], "--label-encoding",
            data["label_encoding"], "--epochs", epochs, "--batch-size", 2, "--lr", "3e-5", "--out", out,
            "--device", "cpu", "--dali-threads", 1]


def main() -> int:
    """Repeat the kill-and-resume scenario, alternating the two orderings; one line per run."""
    import argparse
    import tempfile

    from conftest import make_original_layout

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        data = make_original_layout(Path(tmp) / "data", per_split={"train": 2, "val": 3})
        for run in range(args.runs):
            ordering = ("membership", "failure")[run % 2]
            out, logs = Path(tmp) / f"run{run}", Path(tmp) / f"logs{run}"
            started = time.monotonic()
            try:
                outcome = kill_and_resume(train_command(data, out, args.epochs), out, logs, ordering)
                history = json.loads((out / "history.json").read_text())
                survivor = 1 - outcome.victim
                counts = [outcome.restart_counts[outcome.victim], outcome.restart_counts[survivor]]
                ok = (outcome.codes == [0, 0] and len(history["loss"]) == args.epochs
                      and counts == ([1, 0] if ordering == "membership" else [1, 1])
                      and (ordering == "failure" or "failed (exitcode" not in outcome.logs[survivor]))
                detail = (f"exit codes {outcome.codes}, restart counts killed/other node {counts[0]}/{counts[1]}, "
                          f"{len(history['loss'])}/{args.epochs} epochs in history")
            except Exception as e:  # report and go on: the point is the count over many runs
                ok, detail = False, f"{type(e).__name__}: {e}"
            failures += not ok
            print(f"run {run + 1}/{args.runs} {ordering:10s} {'PASS' if ok else 'FAIL'} in "
                  f"{time.monotonic() - started:.0f} s: {detail}", flush=True)
    print(f"{args.runs - failures}/{args.runs} passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
