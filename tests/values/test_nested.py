from collections import OrderedDict, defaultdict, namedtuple

from distcomm.values.nested import flatten, map_leaves, unflatten

Point = namedtuple("Point", "x y")


def test_round_trip_keeps_container_types_and_order() -> None:
    data = {"b": [1, (2, 3)], "a": Point(4, {"z": 5}), "o": OrderedDict(k=6)}
    leaves, paths, spec = flatten(data)
    assert leaves == [1, 2, 3, 4, 5, 6]
    assert paths[0] == "['b'][0]" and paths[4] == "['a'][1]['z']"
    rebuilt = unflatten(spec, leaves)
    assert rebuilt == data
    assert isinstance(rebuilt["b"][1], tuple) and isinstance(rebuilt["a"], Point)
    assert isinstance(rebuilt["o"], OrderedDict) and list(rebuilt) == ["b", "a", "o"]


def test_a_leaf_is_its_own_structure() -> None:
    leaves, paths, spec = flatten(7)
    assert (leaves, paths, spec.is_leaf) == ([7], [""], True)
    assert unflatten(spec, [8]) == 8


def test_map_leaves_and_defaultdict() -> None:
    counts = defaultdict(int, a=1)
    assert map_leaves(lambda v: v * 10, {"c": counts, "l": []}) == {"c": {"a": 10}, "l": []}
