"""Hooks: every public collective passes through them, in order, on every communicator."""

from __future__ import annotations

import inspect
import os

import pytest
import torch
from support.transports import BackendCommunicator

import distcomm
from distcomm import (
    CheckedCommunicator,
    CheckHook,
    ClosedCommunicatorError,
    Communicator,
    FlightRecorder,
    Hook,
    InvalidArgumentError,
    LocalCommunicator,
    ProfiledCommunicator,
    ProfileHook,
)
from distcomm.instrument.hooks import COLLECTIVES, Call


class Recorder(Hook):
    """Writes down every call it sees, and what it ended with."""

    def __init__(self, name: str = "recorder", order: int = 50, log: list | None = None) -> None:
        self.name = name
        self.order = order  # type: ignore[misc]
        self.log = [] if log is None else log

    def before(self, call: Call) -> None:
        self.log.append((self.name, "before", call.operation))

    def after(self, call: Call, error: BaseException | None) -> None:
        self.log.append((self.name, "after", call.operation, type(error).__name__ if error else None))

    def for_split(self, child: Communicator) -> Hook:
        return Recorder(f"{self.name}-child", self.order, self.log)


# One call of each public method; a public method missing here fails the coverage test.
CALLS = {
    "barrier": lambda c: c.barrier(),
    "broadcast": lambda c: c.broadcast({"w": torch.ones(2)}),
    "all_reduce": lambda c: c.all_reduce(torch.ones(2)),
    "reduce_dict": lambda c: c.reduce_dict({"loss": 1.0}),
    "all_gather": lambda c: c.all_gather(torch.ones(2)),
    "all_gather_object": lambda c: c.all_gather_object("x"),
    "gather_object": lambda c: c.gather_object("x"),
    "broadcast_object": lambda c: c.broadcast_object("x"),
    "broadcast_object_list": lambda c: c.broadcast_object_list(["x"]),
    "scatter_object": lambda c: c.scatter_object(["x"]),
    "split": lambda c: c.split([0]),
    "all_reduce_async": lambda c: c.all_reduce_async(torch.ones(2)).wait(),
    "broadcast_async": lambda c: c.broadcast_async(torch.ones(2)).wait(),
    "all_gather_async": lambda c: c.all_gather_async(torch.ones(2)).wait(),
    "reduce": lambda c: c.reduce(torch.ones(2)),
    "gather": lambda c: c.gather(torch.ones(2)),
    "scatter": lambda c: c.scatter([torch.ones(2)]),
    "reduce_scatter": lambda c: c.reduce_scatter(torch.ones(2)),
    "all_to_all": lambda c: c.all_to_all([torch.ones(2)]),
    "reduce_scatter_async": lambda c: c.reduce_scatter_async(torch.ones(2)).wait(),
    "all_to_all_async": lambda c: c.all_to_all_async([torch.ones(2)]).wait(),
    "batch_send_recv": lambda c: c.batch_send_recv({}, []),
    "mesh": lambda c: c.mesh({"dp": 1}),
    "shrink": lambda c: c.shrink(),
    "admit": lambda c: c.admit(),
    # A world of one has no peer: these are seen failing, as themselves.
    "send": lambda c: c.send(torch.ones(2), 0),
    "recv": lambda c: c.recv(0),
    "isend": lambda c: c.isend(torch.ones(2), 0),
    "irecv": lambda c: c.irecv(0),
}
REFUSED_ALONE = {"send", "recv", "isend", "irecv"}
DEPRECATED = {"all_gather_objects": "all_gather_object", "gather_objects": "gather_object", "scatter_objects": "scatter_object"}
NOT_COLLECTIVES = {"close", "register_hook", "remove_hook", "dump_flight_record", "with_hooks"}
# autograd is a property: its collectives are the communicator's own, seen as such.


def public_methods() -> set[str]:
    return {
        name
        for name, value in inspect.getmembers(Communicator)
        if not name.startswith("_") and callable(value) and not isinstance(inspect.getattr_static(Communicator, name), property)
    }


def test_every_public_method_is_seen_by_a_hook() -> None:
    assert public_methods() == set(CALLS) | set(DEPRECATED) | NOT_COLLECTIVES
    assert set(COLLECTIVES) == set(CALLS)
    for name, call in CALLS.items():
        comm = LocalCommunicator()
        recorder = Recorder()
        comm.register_hook(recorder)
        if name in REFUSED_ALONE:
            with pytest.raises(InvalidArgumentError, match="is this rank"):
                call(comm)
        else:
            call(comm)
        # Seen once, as the method the caller called: internal steps are not calls of their own.
        error = "InvalidArgumentError" if name in REFUSED_ALONE else None
        assert recorder.log == [("recorder", "before", name), ("recorder", "after", name, error)], name


def test_deprecated_object_names_warn_and_are_seen_under_the_new_name() -> None:
    comm = LocalCommunicator()
    recorder = Recorder()
    comm.register_hook(recorder)
    with pytest.warns(DeprecationWarning, match="all_gather_objects is deprecated: call all_gather_object"):
        assert comm.all_gather_objects("x") == ["x"]
    with pytest.warns(DeprecationWarning, match="gather_object"):
        assert comm.gather_objects("y") == ["y"]
    with pytest.warns(DeprecationWarning, match="scatter_object"):
        assert comm.scatter_objects(["z"]) == "z"
    assert [entry[2] for entry in recorder.log if entry[1] == "before"] == list(DEPRECATED.values())


def test_hooks_run_in_order_and_a_handle_removes_them() -> None:
    comm = LocalCommunicator()
    log: list = []
    late = comm.register_hook(Recorder("timer", 100, log))
    comm.register_hook(Recorder("check", 0, log))
    comm.barrier()
    assert log == [
        ("check", "before", "barrier"),
        ("timer", "before", "barrier"),
        ("timer", "after", "barrier", None),
        ("check", "after", "barrier", None),
    ]
    late.remove()
    late.remove()  # harmless twice
    log.clear()
    comm.barrier()
    assert [entry[0] for entry in log] == ["check", "check"]


def test_after_hooks_see_failures_and_a_raising_before_stops_the_call() -> None:
    comm = LocalCommunicator()
    recorder = Recorder()
    comm.register_hook(recorder)
    with pytest.raises(InvalidArgumentError):
        comm.all_reduce(torch.ones(1), "median")
    assert recorder.log[-1] == ("recorder", "after", "all_reduce", "InvalidArgumentError")

    class Refuse(Hook):
        order = 0

        def before(self, call: Call) -> None:
            raise RuntimeError(f"no {call.operation} today")

    comm.register_hook(Refuse())
    recorder.log.clear()
    with pytest.raises(RuntimeError, match="no barrier today"):
        comm.barrier()
    assert recorder.log == []  # the refusing hook ran first; the call never started


class Keep(Hook):
    """Keeps every call it sees."""

    def __init__(self, seen: list[Call]) -> None:
        self.seen = seen

    def before(self, call: Call) -> None:
        self.seen.append(call)


def test_a_call_describes_itself_only_when_asked() -> None:
    seen: list[Call] = []
    comm = LocalCommunicator()
    comm.register_hook(Keep(seen))
    comm.all_reduce({"a": torch.ones(2, 3)}, "mean")
    comm.broadcast_object("x", src=0)
    assert seen[0].details.startswith("dict(float32[2, 3]) #") and seen[0].details.endswith("op=mean")
    assert seen[0].payload_bytes == 24 and seen[1].details == "src=0" and seen[1].payload_bytes == 0


def test_split_passes_hooks_on() -> None:
    comm = LocalCommunicator()
    recorder = Recorder()
    comm.register_hook(recorder)
    child = comm.split([0])
    child.barrier()
    assert ("recorder-child", "before", "barrier") in recorder.log


def test_checked_and_profiled_are_views_that_leave_the_inner_communicator_alone() -> None:
    inner = LocalCommunicator()
    both = ProfiledCommunicator(CheckedCommunicator(inner))
    # the recorder first and last, timers closest to the call
    assert [type(h) for h in both.hooks] == [FlightRecorder, CheckHook, ProfileHook]
    assert inner.hooks == (inner.flight_recorder,) and both.group is None and both.device == inner.device
    both.all_reduce(torch.ones(2))
    assert [(r["op"], r["count"]) for r in both.summary()] == [("all_reduce", 1)]
    both.close()
    assert inner.closed
    with pytest.raises(ClosedCommunicatorError, match="all_reduce on a closed ProfiledCommunicator"):
        both.all_reduce(1)
    assert issubclass(ClosedCommunicatorError, InvalidArgumentError)


def test_communicator_is_abstract_and_a_subclass_provides_its_backend() -> None:
    from distcomm.backends.local import LocalBackend

    assert inspect.isabstract(Communicator) and Communicator.__abstractmethods__ == frozenset({"_open_backend"})
    with pytest.raises(TypeError, match="abstract"):
        Communicator()  # type: ignore[abstract]
    assert not inspect.isabstract(distcomm.LocalCommunicator) and not inspect.isabstract(distcomm.TorchDistCommunicator)
    comm = BackendCommunicator(LocalBackend())
    assert comm.all_reduce([1, 2.5], "mean") == [1.0, 2.5] and comm.backend == "local"
    with pytest.raises(InvalidArgumentError, match="runs on a distcomm Backend"):
        BackendCommunicator("gloo")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="takes a distcomm.instrument.hooks.Hook"):
        comm.register_hook(print)  # type: ignore[arg-type]


def test_use_communicator_attaches_what_the_environment_asks(monkeypatch) -> None:
    monkeypatch.setenv("DISTCOMM_PROFILE", "1")
    with distcomm.use_communicator(LocalCommunicator()) as active:
        assert isinstance(active, ProfiledCommunicator) and distcomm.get_communicator() is active
        active.barrier()
        assert active.summary()[0]["op"] == "barrier"


# --------------------------------------------------------------- real ranks


def set_variable(comm, name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def kind_handed_to_a_test(comm) -> str:
    return type(comm).__name__


def facade_subgroup_mismatch(comm):
    from distcomm import distutils

    sub = comm.split([0, 1])
    try:
        distutils.all_reduce(torch.ones(2 + comm.rank), group=sub.group)
    except distcomm.CollectiveMismatchError as error:
        return "mismatch" if "float32[2]" in str(error) and "float32[3]" in str(error) else str(error)
    finally:
        sub.close()
    return "no check"


def test_the_environment_reaches_world_and_facade_groups(dist_world) -> None:
    world = dist_world(2)
    world.run(set_variable, "DISTCOMM_DEBUG", "1")
    try:
        assert world.run(kind_handed_to_a_test) == ["CheckedCommunicator"] * 2
        assert world.run(facade_subgroup_mismatch) == ["mismatch"] * 2
    finally:
        world.run(set_variable, "DISTCOMM_DEBUG", None)
    assert world.run(kind_handed_to_a_test) == ["TorchDistCommunicator"] * 2


def asynchrony(comm):
    big = comm.all_gather_async(torch.ones(4096))  # too large to travel with the shapes
    gathered = [t.sum().item() for t in big.wait()]
    return (
        comm.all_reduce_async(torch.ones(4)).asynchronous,
        comm.all_reduce_async(torch.ones(4, dtype=torch.int16)).asynchronous,  # Gloo converts int16 first
        comm.all_reduce_async(torch.ones(4), "mean").asynchronous,  # the division waits for the data
        comm.broadcast_async(torch.ones(4)).asynchronous,
        comm.all_gather_async(torch.ones(2)).asynchronous,  # small: it travels with the shapes
        gathered + [big.asynchronous],
    )


def test_handles_say_whether_they_run_in_the_background(dist_world) -> None:
    expected = (True, False, False, True, False, [4096.0, 4096.0, True])
    assert dist_world(2).run(asynchrony) == [expected] * 2
    assert LocalCommunicator().all_reduce_async(torch.ones(1)).asynchronous is False


def facade_keeps_no_group(comm):
    import gc
    import weakref

    import torch.distributed as dist

    from distcomm import distutils

    group = dist.new_group([0, 1])
    distutils.all_reduce(torch.ones(1), group=group)
    distutils.broadcast(torch.ones(1), 0, group=group)
    ref = weakref.ref(group)
    dist.destroy_process_group(group)
    del group
    gc.collect()
    return ref() is None


def test_the_facade_holds_no_subgroup_past_its_life(dist_world) -> None:
    assert dist_world(2).run(facade_keeps_no_group) == [True, True]


def hooks_churn_while_collectives_run(comm) -> list[float]:
    """Another thread adds and removes hooks while 120 checked collectives run."""
    import threading

    from distcomm import CheckedCommunicator, ProfileHook

    checked = CheckedCommunicator(comm, timeout=10)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            handle = checked.register_hook(ProfileHook())
            other = checked.register_hook(Hook())
            handle.remove()
            other.remove()

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        totals = [checked.all_reduce(torch.ones(1)).item() + checked.all_reduce({"n": 1})["n"] for _ in range(60)]
    finally:
        stop.set()
        thread.join()
    assert checked.hooks == (checked.flight_recorder, checked.check) or checked.hooks == (checked.check,)
    return totals


def test_hooks_registered_from_another_thread_never_split_the_ranks(dist_world) -> None:
    results = dist_world(2).run(hooks_churn_while_collectives_run)
    assert results == [[4.0] * 60, [4.0] * 60]


def test_a_view_shares_the_hooks_of_its_communicator_live() -> None:
    inner = LocalCommunicator()
    log: list = []
    view = inner.with_hooks(Recorder("view", 60, log))
    assert type(view) is LocalCommunicator and view.rank == inner.rank and view.inner is inner and inner.inner is None
    handle = inner.register_hook(Recorder("inner", 40, log))  # after the view was made
    view.barrier()
    assert [entry[:2] for entry in log] == [("inner", "before"), ("view", "before"), ("view", "after"), ("inner", "after")]
    handle.remove()
    log.clear()
    view.barrier()
    inner.barrier()  # the view's own hook is not the inner communicator's
    assert [entry[0] for entry in log] == ["view", "view"]
    checked = CheckedCommunicator(inner)
    late = Recorder("late", 50, log)
    inner.register_hook(late)
    assert checked.hooks == (inner.flight_recorder, checked.check, late)


def test_hooks_of_views_and_of_their_communicator_carry_on_to_split_children_once() -> None:
    inner = LocalCommunicator()
    log: list = []
    inner.register_hook(Recorder("inner", 40, log))
    view = ProfiledCommunicator(inner.with_hooks(Recorder("view", 60, log)))
    child = view.split([0])
    assert isinstance(child, ProfiledCommunicator) and child.inner.inner.flight_recorder is inner.flight_recorder
    log.clear()  # the split itself passed through the parent's hooks
    child.barrier()
    assert [entry[:2] for entry in log] == [
        ("inner-child", "before"), ("view-child", "before"), ("view-child", "after"), ("inner-child", "after")
    ]
    assert [type(h).__name__ for h in child.hooks] == ["FlightRecorder", "Recorder", "Recorder", "ProfileHook"]
    assert child.summary()[0]["op"] == "barrier" and view.summary()[0]["op"] == "split"


def test_a_call_binds_its_arguments_lazily_with_the_defaults_of_the_signature() -> None:
    seen: list[Call] = []
    comm = LocalCommunicator()
    comm.register_hook(Keep(seen))
    comm.all_reduce(3)
    comm.all_gather(torch.ones(2), same_shape=True)
    comm.broadcast(torch.ones(1), 0)
    assert seen[0].arguments == {"data": 3, "op": "sum"} and seen[0].details == "int op=sum"
    assert seen[1].arguments == {"data": seen[1].data, "same_shape": True, "out": None}
    assert seen[1].details == "float32[2] same_shape" and seen[2].details == "float32[1] src=0"
    assert seen[2].argument("src") == 0 and seen[0].payload_bytes == 8


def test_the_flight_recorder_is_registered_like_any_hook() -> None:
    comm = LocalCommunicator()
    mine = FlightRecorder(size=4)
    comm.register_hook(mine)  # takes the place of the default one
    assert comm.hooks == (mine,) and comm.flight_recorder is mine
    comm.all_reduce(torch.ones(3), "max")
    (record,) = mine.records()
    assert (record["op"], record["data"], record["detail"], record["state"]) == ("all_reduce", "float32[3]", "op=max", "completed")
    assert record["file"] == __file__
    comm.remove_hook(mine)
    assert comm.hooks == () and comm.dump_flight_record() is None


def test_a_recorder_with_its_own_before_and_after_sees_every_call() -> None:
    # The flight recorder alone is called straight (start/end, no Call); a recorder that keeps
    # the before/after protocol instead must still see every call through it.
    from distcomm.instrument.hooks import Recorder

    seen: list[tuple[str, str, bool]] = []

    class Mine(Recorder):
        def before(self, call: Call) -> None:
            seen.append(("before", call.operation, True))

        def after(self, call: Call, error: BaseException | None) -> None:
            seen.append(("after", call.operation, error is None))

    comm = LocalCommunicator()
    comm.register_hook(Mine())  # the newest recorder takes the flight recorder's place
    assert len(comm.hooks) == 1
    comm.all_reduce(torch.ones(1))
    comm.barrier()
    assert seen == [("before", "all_reduce", True), ("after", "all_reduce", True), ("before", "barrier", True), ("after", "barrier", True)]
