"""Fair order: round-robin across members, priority classes, retries first, cheap positions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core.fair_order import FairOrder
from bot.core.jobs import Job

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_job(
    user: str, t: float, *, steps: int = 10, priority: int = 0, attempts: int = 0, name: str = ""
) -> Job:
    return Job(
        kind="image",
        model="m",
        prompt=name or f"{user}@{t}",
        params={"kind": "image", "model": "m", "width": 64, "height": 64, "steps": steps},
        user_id=user,
        user_name=user,
        created_at=T0 + timedelta(seconds=t),
        priority=priority,
        attempts=attempts,
        id=name or f"{user}-{t}",
    )


def cost(job: Job) -> float:
    return float(job.params["steps"])


def drain(order: FairOrder, start: float = 100.0) -> list[str]:
    """Serve everything, one job per second, as the queue would."""
    out = []
    t = start
    while (job := order.pop()) is not None:
        order.served(job.user_id, (T0 + timedelta(seconds=t)).timestamp())
        out.append(job.id)
        t += 1
    return out


def test_interleaved_burst_from_three_members_runs_round_robin() -> None:
    order = FairOrder(cost=cost)
    # alice asks 4 times in a row, then bob twice, carol three times, alice once more
    arrivals = [
        ("alice", 1),
        ("alice", 2),
        ("alice", 3),
        ("alice", 4),
        ("bob", 5),
        ("bob", 6),
        ("carol", 7),
        ("carol", 8),
        ("carol", 9),
        ("alice", 10),
    ]
    for user, t in arrivals:
        order.add(make_job(user, t, name=f"{user}{t}"))
    assert order.position("bob5") == 2
    assert order.position("carol7") == 3
    assert order.position("alice2") == 4
    assert drain(order) == [
        "alice1",
        "bob5",
        "carol7",
        "alice2",
        "bob6",
        "carol8",
        "alice3",
        "carol9",
        "alice4",
        "alice10",
    ]


def test_fifty_jobs_of_one_member_never_starve_anothers_one() -> None:
    order = FairOrder(cost=cost)
    for i in range(50):
        order.add(make_job("heavy", i, name=f"h{i}"))
    order.add(make_job("light", 60, name="l0"))
    assert order.position("l0") == 2
    first = order.pop()
    assert first is not None and first.id == "h0"
    order.served("heavy", (T0 + timedelta(seconds=61)).timestamp())
    assert order.position("l0") == 1
    # a newcomer while heavy's job runs joins the rotation after heavy's next turn
    order.add(make_job("new", 62, name="n0"))
    assert [j.id for j in order.ordered(4)] == ["l0", "h1", "n0", "h2"]


def test_priority_class_goes_first_and_retries_before_everything() -> None:
    order = FairOrder(cost=cost)
    order.add(make_job("a", 1, name="a1"))
    order.add(make_job("b", 2, name="b1", priority=5))
    order.add(make_job("c", 3, name="c1", attempts=1))
    assert order.ordered() == [order.get("c1"), order.get("b1"), order.get("a1")]
    assert order.position("a1") == 3
    assert order.work_ahead("a1") == 20.0


def test_remove_and_counts() -> None:
    order = FairOrder(cost=cost)
    for t in range(3):
        order.add(make_job("a", t, name=f"a{t}"))
    order.add(make_job("b", 5, name="b0"))
    assert order.count_for_user("a") == 3 and len(order) == 4 and order.users() == 2
    assert order.remove("a1") is not None
    assert order.remove("a1") is None
    assert order.count_for_user("a") == 2
    assert [j.id for j in order] == ["a0", "b0", "a2"]
    assert order.work_ahead("a2") == 20.0


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "add", "pop", "remove"]),
        st.sampled_from(["u1", "u2", "u3", "u4"]),
        st.integers(min_value=0, max_value=2),  # priority
        st.integers(min_value=1, max_value=30),  # steps (cost)
        st.booleans(),  # a retry
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_closed_form_position_and_work_match_the_materialised_order(script: list) -> None:
    order = FairOrder(cost=cost)
    t = 0.0
    for n, (op, user, priority, steps, retry) in enumerate(script):
        t += 1
        if op == "add":
            order.add(make_job(user, t, steps=steps, priority=priority, attempts=int(retry), name=f"j{n}"))
        elif op == "pop":
            job = order.pop()
            if job is not None:
                order.served(job.user_id, (T0 + timedelta(seconds=t)).timestamp())
        elif len(order):
            victim = order.ordered()[steps % len(order)]
            order.remove(victim.id)
        listed = order.ordered()
        assert len(listed) == len(order)
        ahead = 0.0
        for i, job in enumerate(listed):
            assert order.position(job.id) == i + 1
            assert abs((order.work_ahead(job.id) or 0.0) - ahead) < 1e-9
            ahead += cost(job)
        if listed:
            assert order.peek() is listed[0]
