"""The engine's probe timing (reproduce.kernel_probe): one untimed call each, then alternating rounds, medians."""

from __future__ import annotations

from reproduce import kernel_probe


def test_untimed_first_calls_then_alternating_rounds_and_medians(monkeypatch) -> None:
    calls: list[str] = []
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr(kernel_probe.time, "perf_counter", lambda: next(clock))
    durations = {"a": iter([5, 1, 3]), "b": iter([2, 2, 9])}

    def run(name: str):
        def fn() -> None:
            calls.append(name)
            if len(calls) > 2:  # a timed call: advance the fake clock by its duration - 1 (the end read adds 1)
                for _ in range(next(durations[name]) - 1):
                    next(clock)
        return fn

    ms = kernel_probe.median_ms_interleaved({"a": run("a"), "b": run("b")}, rounds=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then a-b, b-a, a-b
    assert ms == {"a": 3000.0, "b": 2000.0}  # medians of (5, 1, 3) and (2, 2, 9) seconds, in ms
