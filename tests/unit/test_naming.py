"""Backend and slot names: readable, HAProxy-safe, one-to-one; slot capacity math."""

from __future__ import annotations

import random
import re

import pytest

from servicerouter.naming import capacity, service_name, slot_name

HAPROXY_NAME = re.compile(r"[A-Za-z0-9_.:-]+")


@pytest.mark.parametrize(
    ("app_id", "port", "index", "expected"),
    [
        ("/shop/web", 10001, 0, "shop_web_10001"),
        ("/nginx-bridge", 10200, 0, "nginx-bridge_10200"),
        ("/a/b_c", 10001, 0, "a_b__c_10001"),
        ("/a_b/c", 10001, 0, "a__b_c_10001"),
        ("/a.b/c", 1, 0, "a.b_c_1"),
        ("/a/b", 0, 1, "a_b_idx1"),
        ("/Shop/Web", 80, 0, "Shop_Web_80"),
        ("/a b", 80, 0, "a:20b_80"),
        ("/é", 80, 0, ":c3:a9_80"),
    ],
)
def test_service_name(app_id: str, port: int, index: int, expected: str) -> None:
    assert service_name(app_id, port, index) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("/a/b_c", 1), ("/a_b/c", 1)),
        (("/a_/b", 1), ("/a/_b", 1)),
        (("/a__/b", 1), ("/a/__b", 1)),
        (("/a_b", 1), ("/a//b", 1)),
        (("/a:5f", 1), ("/a_", 1)),
        (("/a/1", 2), ("/a", 1)),
        (("/a", 12), ("/a_1", 2)),
        (("/a", 0, 1), ("/a", 0, 2)),
        (("/a", 0, 1), ("/a/idx1", 0, 0)),
        (("/shop", 80), ("/SHOP", 80)),
    ],
)
def test_distinct_ids_get_distinct_names(a: tuple, b: tuple) -> None:
    assert service_name(*a) != service_name(*b)


# Small and underscore-heavy, so near-collisions are common; plus what must be escaped.
ALPHABET = "a_b_a_" + "-.:é#;\n\"'%1"


def _random_id(rng: random.Random) -> str:
    segments = ["".join(rng.choice(ALPHABET.replace("/", "")) for _ in range(rng.randint(1, 5)))
                for _ in range(rng.randint(1, 3))]
    return "/" + "/".join(segments)


@pytest.mark.parametrize("seed", range(5))
def test_random_ids_map_injectively_to_haproxy_safe_names(seed: int) -> None:
    rng = random.Random(seed)
    keys = {(_random_id(rng), rng.choice([0, 80, 10001, 10010]), rng.randint(0, 3))
            for _ in range(4000)}
    # Port 0 services are named by index; otherwise the index is not part of the name.
    keys = {(app_id, port, index if port == 0 else 0) for app_id, port, index in keys}
    names: dict[str, tuple] = {}
    for key in keys:
        name = service_name(*key)
        assert HAPROXY_NAME.fullmatch(name), (key, name)
        assert names.setdefault(name, key) == key, f"{key} and {names[name]} both → {name}"


@pytest.mark.parametrize(("number", "name"), [(1, "s1"), (8, "s8"), (120, "s120")])
def test_slot_names(number: int, name: str) -> None:
    assert slot_name(number) == name


@pytest.mark.parametrize(
    ("used", "expected"),
    [(0, 8), (1, 8), (4, 8), (5, 16), (12, 16), (13, 24), (20, 24), (21, 32), (100, 104)],
)
def test_capacity_keeps_min_free_in_whole_increments(used: int, expected: int) -> None:
    got = capacity(used, min_free=4, increment=8)
    assert got == expected
    assert got - used >= 4 and got % 8 == 0


@pytest.mark.parametrize(
    ("used", "min_free", "increment", "expected"),
    [(0, 0, 8, 8), (3, 0, 1, 3), (0, 0, 0, 1), (10, 2, 5, 15), (7, 1, 0, 8)],
)
def test_capacity_edge_settings(used: int, min_free: int, increment: int, expected: int) -> None:
    assert capacity(used, min_free, increment) == expected
