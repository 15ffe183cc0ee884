"""model.quick_init and model.evolve: the faster __init__ and replace build exactly what
the dataclass's would."""

from __future__ import annotations

import dataclasses

import pytest

from servicerouter.model import (
    App,
    Endpoint,
    EndpointState,
    Health,
    Options,
    Problem,
    Service,
    Task,
    evolve,
    quick_init,
)


def test_values_defaults_and_keywords_as_the_dataclass_init() -> None:
    task = Task("t.1", "/a", "10.0.0.1", (31000,), "TASK_RUNNING")
    assert (task.health, task.host) == (Health.NONE, "")
    assert task == Task(id="t.1", app_id="/a", ip="10.0.0.1", ports=(31000,),
                        state="TASK_RUNNING", health=Health.NONE, host="")
    assert hash(task) == hash(dataclasses.replace(task))
    assert Endpoint("t.1", "10.0.0.1", 31000).state is EndpointState.READY
    assert Service("/a", 0, 80).options == Options()
    assert Problem("/a", 0, "port", "PORT", "x", "bad").index == 0


def test_default_factories_give_a_fresh_value_each_time() -> None:
    first, second = App("/a"), App("/b")
    assert first.labels == {} and first.labels is not second.labels
    assert App("/a", labels={"X": "1"}).labels == {"X": "1"}


def test_still_frozen_and_still_checks_arguments() -> None:
    task = Task("t.1", "/a", None, (), "TASK_STAGING")
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.state = "TASK_RUNNING"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Task("t.1", "/a")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Task("t.1", "/a", None, (), "S", nonsense=1)  # type: ignore[call-arg]


def test_refuses_a_class_it_cannot_build() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        x: int

    with pytest.raises(TypeError, match="slots dataclass"):
        quick_init(NoSlots)


@pytest.mark.parametrize("changes", [
    {}, {"groups": ("external",)}, {"mode": Options().mode, "balance": "leastconn"},
    {f.name: getattr(Options(sticky=True), f.name) for f in dataclasses.fields(Options)},
])
def test_evolve_is_dataclasses_replace(changes: dict[str, object]) -> None:
    options = Options(vhosts=("a.example.com",), sticky=True)
    assert evolve(options, **changes) == dataclasses.replace(options, **changes)
    assert evolve(options, **changes) is not options


def test_evolve_names_a_field_the_class_lacks() -> None:
    with pytest.raises(TypeError, match="Options has no field 'vhost'"):
        evolve(Options(), vhost=("a",))


def test_evolve_leaves_other_dataclasses_to_dataclasses_replace() -> None:
    @dataclasses.dataclass(frozen=True)
    class Checked:
        a: int
        b: int = 0
        seen: list[int] = dataclasses.field(default_factory=list, init=False)

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("a < 0")

    assert evolve(Checked(1), b=2) == Checked(1, 2)
    with pytest.raises(ValueError, match="a < 0"):
        evolve(Checked(1), a=-1)
