"""A short classroom in CI: several students' runs through the worker pool at once, each gets its
model and sees only its own data (outcomes only; the figures come from ``python -m benchmarks.classroom``)."""
from benchmarks.classroom import simulate


def test_every_simulated_student_gets_their_own_model():
    report = simulate(sessions=4, images=12, throughput=False, timeout=300)
    assert report["stuck"] == 0 and report["exceptions"] == 0, report
    assert report["own_data_only"] and not report["failed"], report


def test_one_abusive_student_is_limited_and_stops_nobody_else(setenv):
    """A 200,000 x 40 strip, a zip bomb, 500-epoch runs and ten extra projects from one laptop, while
    four students train: each limit says what it is, and every other student still gets a model."""
    setenv("TLS_MAX_EPOCHS", "200")  # the default (the test suite lifts it for its endless runs)
    report = simulate(sessions=4, images=12, throughput=False, timeout=300, abuser=True)
    assert report["stuck"] == 0 and report["exceptions"] == 0 and not report["failed"], report
    abuser = report["abuser"]
    assert abuser["runs_accepted"] == 20, abuser  # the queue limit per student, across their 11 projects
    assert any("epochs of one run is limited to" in m for m in abuser["limited"]), abuser
    assert any("at once is limited to 20" in m for m in abuser["limited"]), abuser
    assert "2,000 file(s) were refused, for example a/0.png" in abuser["bomb"], abuser
