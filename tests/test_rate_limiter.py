from lambdaflow.synthetic.producer import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_spaces_calls(monkeypatch) -> None:
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.now += seconds
        clock.slept += seconds

    monkeypatch.setattr("lambdaflow.synthetic.producer.time.sleep", sleep)
    limiter = RateLimiter(rate=50, clock=clock)
    for _ in range(101):
        limiter.wait()
    assert abs(clock.now - 102.0) < 1e-6  # 100 intervals of 20 ms after the first call


def test_no_rate_never_sleeps(monkeypatch) -> None:
    monkeypatch.setattr("lambdaflow.synthetic.producer.time.sleep", lambda s: (_ for _ in ()).throw(AssertionError))
    limiter = RateLimiter(rate=None)
    for _ in range(1000):
        limiter.wait()
