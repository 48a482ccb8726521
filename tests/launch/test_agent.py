"""``python -m distcomm run``: real jobs of Gloo workers under the agent, workers killed with
SIGKILL mid-step; the survivors go on, the agent starts the dead one again, it rejoins, and the
job finishes on every seat with the losses of one process training on all the data (the
example checks them on every worker and fails the job otherwise)."""

import os
from pathlib import Path

import pytest
from support import warm
from support.launchers import namespace, netns_supported

from distcomm.cli.run import parser
from distcomm.launch.agent import AgentConfig
from distcomm.wire.rejoin import NOT_ADMITTED_STATUS

EXAMPLE = Path(__file__).parents[2] / "examples" / "resilient_training.py"
FAULTS = Path(__file__).parents[1] / "support" / "rejoin_faults.py"


def run_job(*arguments: str, faults: dict[str, str]) -> str:
    """``python -m distcomm run --warm-start --nproc-per-node 4 rejoin_faults.py --worker ARGS``
    with ``faults`` in its environment; its output."""
    target = ["-m", "distcomm", "run", "--warm-start", "--nproc-per-node", "4", str(FAULTS), "--worker", *arguments]
    process = warm.WarmProcess(target, env={**os.environ, **faults})
    out, err = process.communicate(150)
    assert process.returncode == 0, out + err
    return out + err


@pytest.mark.integration
def test_a_replacement_that_dies_while_joining_is_left_out_and_after_two_failures_every_seat_comes_back() -> None:
    # Seat 1 dies at step 3; its first replacement is killed once admitted, before the world forms;
    # the second joins; seat 3 dies at step 14 and its replacement joins too. (Rank 0 of one
    # agent: tests/test_examples.py; rank 0 with two agents: below.)
    output = run_job("--kill-rank", "1", "--kill-step", "3", "--also-kill", "3:14", faults={"KILL_JOINING": "1"})
    assert "seat 1 (a replacement) was admitted as" in output
    assert "worker 1 ended with signal SIGKILL; starting it again (restart 2 of 3)" in output  # the second replacement
    assert "worker 3 ended with signal SIGKILL; starting it again (restart 1 of 3)" in output
    assert "lost seat(s) [1, 3] at step(s) [3, 14]" in output and "seat(s) [1, 3] rejoined" in output
    assert "steps on 4 ranks" in output


@pytest.mark.integration
@pytest.mark.skipif(not netns_supported(), reason="needs root and 'ip netns' for a fixed rendezvous port")
def test_two_agents_keep_their_survivors_when_rank_0_dies_and_a_live_rank_dies_during_the_rejoin() -> None:
    # Rank 0 (on the agent that keeps the store) dies at step 3; seat 3, on the other agent,
    # dies as a live rank right after agreeing to admit rank 0's replacement.
    with namespace() as ns:  # a private network: the fixed rendezvous port cannot collide
        common = ["-m", "distcomm", "run", "--warm-start", "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-endpoint",
                  "127.0.0.1:29400", "--rdzv-id", "two-agents", "--local-addr", "127.0.0.1", str(FAULTS), "--worker",
                  "--kill-rank", "0", "--kill-step", "3"]  # fmt: skip
        agents = [warm.WarmProcess(common, env={**os.environ, "KILL_ADMITTING": "3"}, netns=ns) for _ in range(2)]
        outputs = []
        for agent in agents:
            out, err = agent.communicate(150)
            assert agent.returncode == 0, out + err
            outputs.append(out + err)
    both = "".join(outputs)
    assert "worker 0 ended with signal SIGKILL; starting it again" in both
    assert "seat 3 (live) agreed to admit" in both and "worker 3 ended with signal SIGKILL; starting it again" in both
    assert "lost seat(s) [0, 3] at step(s) [3]" in both and "seat(s) [0, 3] rejoined" in both
    assert "steps on 4 ranks" in both
    assert sorted(line.split("node ")[1][:1] for line in both.splitlines() if "distcomm run: node" in line) == ["0", "1"]


def test_the_command_line_takes_torchruns_options() -> None:
    args = parser().parse_args(["--nproc_per_node", "4", "--nnodes", "2", "--rdzv-endpoint", "h:1", "train.py", "--lr", "3"])
    assert (args.nproc_per_node, args.nnodes, args.rdzv_endpoint, args.target, args.arguments) == (4, 2, "h:1", "train.py", ["--lr", "3"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"nproc_per_node": 0}, "nproc-per-node must be a positive whole number, got 0"),
        ({"max_restarts": -1}, "max-restarts must be 0 or more"),
        ({"rdzv_backend": "etcd"}, "'rdzv_backend' must be in"),
        ({"nnodes": 2, "rdzv_backend": "static", "rdzv_endpoint": "h:1"}, "over several nodes, --node-rank"),
        ({"rdzv_backend": "static"}, "the static rendezvous needs --rdzv-endpoint HOST:PORT"),
        ({"nnodes": 2, "node_rank": 2}, "--node-rank must be in 0..1"),
        ({"target": ()}, "name the training script"),
    ],
)
def test_bad_options_are_refused_with_what_to_do(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AgentConfig(**{"target": ("train.py",), **options})


# The agent's own accounting, with workers that are real processes but import nothing: what
# happens to a seat whose worker fails, is restarted, runs out of restarts, or is not admitted.

FAILS_FIRST = "import os, sys; sys.exit(3 if os.environ['DISTCOMM_RESTART_COUNT'] == '0' and os.environ['RANK'] == '1' else 0)"
ALWAYS_FAILS = "import os, sys; sys.exit(3 if os.environ['RANK'] == '1' else 0)"
NOT_ADMITTED = (
    f"import os, sys; sys.exit(3 if os.environ['RANK'] == '1' and not os.environ.get('DISTCOMM_JOIN') "
    f"else {NOT_ADMITTED_STATUS} if os.environ.get('DISTCOMM_JOIN') else 0)"
)


@pytest.mark.parametrize(
    ("code", "max_restarts", "status", "restarts"),
    [
        (FAILS_FIRST, 1, 0, [0, 1]),  # restarted once, then it succeeded
        (ALWAYS_FAILS, 2, 1, [0, 2]),  # out of restarts: the job failed
        (ALWAYS_FAILS, 0, 1, [0, 0]),  # no restarts asked: torchrun's default
        (NOT_ADMITTED, 3, 1, [0, 1]),  # its replacement found the job finished: the seat failed
    ],
    ids=["restarted-then-succeeded", "out-of-restarts", "no-restarts", "replacement-not-admitted"],
)
def test_the_agent_restarts_only_the_failed_worker_and_says_how_the_job_ended(
    code: str, max_restarts: int, status: int, restarts: list[int]
) -> None:
    from distcomm.launch.agent import Agent

    agent = Agent(AgentConfig(target=("-c", code), nproc_per_node=2, max_restarts=max_restarts, monitor_interval=0.02))
    assert agent.run() == status
    assert [worker.restarts for worker in agent.workers] == restarts
    assert agent.workers[0].exit_code == 0


def test_a_terminated_agent_stops_its_workers(tmp_path: Path) -> None:
    import signal
    import time

    script, pids_seen = tmp_path / "sleeper.py", tmp_path / "pids"
    pids_seen.mkdir()
    script.write_text(f"import os, time\nopen(os.path.join({str(pids_seen)!r}, os.environ['RANK']), 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    agent = warm.WarmProcess(["-m", "distcomm", "run", "--nproc-per-node", "2", str(script)])
    deadline = time.monotonic() + 60
    while len([p for p in pids_seen.iterdir() if p.read_text()]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [int(path.read_text()) for path in pids_seen.iterdir()]
    assert len(pids) == 2
    os.kill(agent._process.pid, signal.SIGTERM)
    agent.communicate(30)
    assert agent.returncode == 128 + signal.SIGTERM
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
