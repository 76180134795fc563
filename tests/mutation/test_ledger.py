"""When a recorded mutant result is still valid, and when the full run must run the mutant again."""
from tests.mutation.full import Record, _valid

ID = "casstore/x.py::f::return a < b::a < b -> a <= b"


def record(status: str, function: str = "F1", tests: str = "T1") -> Record:
    return Record(status, 1.0, 1.0, "abc1234", function, tests, "-", ID)


def test_a_changed_function_runs_every_result_again_even_a_judged_one() -> None:
    for status in ("killed", "timeout", "survived", "error"):
        assert not _valid(record(status), "F2", "T1", judged={ID})
    assert not _valid(record("killed"), None, "T1")


def test_caught_results_outlive_test_changes_and_plain_survivors_do_not() -> None:
    assert _valid(record("killed"), "F1", "T2")
    assert _valid(record("timeout"), "F1", "T2")
    assert not _valid(record("survived"), "F1", "T2")
    assert not _valid(record("error"), "F1", "T2")
    assert _valid(record("survived"), "F1", "T1")


def test_a_survivor_judged_equivalent_outlives_test_changes_while_its_function_is_unchanged() -> None:
    assert _valid(record("survived"), "F1", "T2", judged={ID})
    assert not _valid(record("survived"), "F1", "T2", judged={ID + " "})
    # an error is not a verdict on the mutant: it runs again whatever the judgement says
    assert not _valid(record("error"), "F1", "T2", judged={ID})
