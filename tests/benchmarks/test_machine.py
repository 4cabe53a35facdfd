"""The benchmarks' machine line, load verdict and interleaved timing (no real benchmark runs)."""

import io

from benchmarks import machine


def test_machine_line_names_cores_and_isa():
    line = machine.machine_line()
    assert f"{machine.num_cores()} cores" in line and "ISA" in line and "XLA_FLAGS" in line


def test_ratio_is_marked_unreliable_when_the_load_before_exceeds_the_cores(monkeypatch):
    out = io.StringIO()
    watch = machine.LoadWatch(out)
    monkeypatch.setattr(watch, "others_share", lambda: 0.0)
    watch.load_before = watch.cores - 0.5
    assert watch.ratio(1.234) == "1.23x"
    watch.load_before = watch.cores + 0.5
    assert watch.ratio(1.234) == "1.23x UNRELIABLE"
    watch.close()
    assert "before" in out.getvalue() and "after" in out.getvalue() and "UNRELIABLE" in out.getvalue()


def test_ratio_is_marked_unreliable_when_other_processes_share_the_cores(monkeypatch):
    watch = machine.LoadWatch(io.StringIO())
    watch.load_before = 0.0
    monkeypatch.setattr(watch, "others_share", lambda: machine.MAX_OTHERS_SHARE + 0.01)
    assert watch.ratio(2.0, "{:.1f}") == "2.0 UNRELIABLE"


def test_interleaved_alternates_runners_and_takes_medians():
    calls = []
    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    results = machine.interleaved(runners, repeats=3, warmup=1)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert set(results) == {"a", "b"} and all(len(r["times"]) == 3 and r["step_s"] >= 0 for r in results.values())
