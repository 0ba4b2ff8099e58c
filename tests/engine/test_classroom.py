"""A short classroom in CI: several students' runs through the worker pool at once, each gets its
model and sees only its own data (outcomes only; the figures come from ``python -m tests.classroom``)."""
from tests.classroom import simulate


def test_every_simulated_student_gets_their_own_model():
    report = simulate(sessions=4, images=12, throughput=False, timeout=300)
    assert report["stuck"] == 0 and report["exceptions"] == 0, report
    assert report["own_data_only"] and not report["failed"], report
