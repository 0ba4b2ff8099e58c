"""The looks around runs: transferability and stage probes, the learning-rate finder, the data check, measured
speed, comparisons (ladder, study, race), and the verdicts in words."""
