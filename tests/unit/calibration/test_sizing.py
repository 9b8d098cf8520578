"""How much measurement a certification needs (``calibration/sizing.py``): the search for the
smallest passing size, the predicted bound and the size it asks for, a profile from stated
assumptions, durations as the plan prints them. Refusals that say how much more, and fresh
windows of that size certifying: ``test_search.py``."""

from __future__ import annotations

import numpy as np
import pytest

from escalator.calibration import sizing

FULL = sizing.Design(tau=1.0, p=1.0)  # every request shadowed
TENTH = sizing.Design(tau=1.0, p=0.1)


@pytest.mark.parametrize("k", [1, 100, 101, 777, 50_000, 1_234_567])
def test_the_smallest_passing_size_is_found_within_half_a_percent_above_it(k: int) -> None:
    def passes(n: int) -> bool:
        return n >= k

    n = sizing.smallest_passing(passes, 10**9)
    assert n is not None and passes(n)
    assert k <= n <= max(100, k * 1.005 + 1)


def test_no_size_up_to_the_most_passes_is_none() -> None:
    assert sizing.smallest_passing(lambda n: False, 10**6) is None
    assert sizing.smallest_passing(lambda n: n >= 10**6, 10**5) is None


def test_the_predicted_bound_rises_with_the_log_and_the_size_asked_with_the_disagreement() -> None:
    prof = sizing.assumed(0.8, 0.01)
    small, large = (sizing.predicted_lower(prof, FULL, n, 0.05, 0.8) for n in (1_000, 100_000))
    assert small[-1] == large[-1] == 1.0, "escalating everything always agrees"
    assert small[0] < large[0] < 0.992, "more data, a tighter bound below the true 0.992"
    sizes = [
        sizing.required_requests(sizing.assumed(0.8, q), FULL, 0.97, 0.05, 0)
        for q in (0.005, 0.01, 0.02)
    ]
    assert all(s is not None for s in sizes) and sizes == sorted(sizes) and len(set(sizes)) == 3
    shadowed = sizing.required_requests(sizing.assumed(0.8, 0.01), TENTH, 0.97, 0.05, 0)
    assert shadowed is not None and sizes[1] is not None and shadowed > sizes[1], (
        "measuring a tenth of the traffic takes more requests"
    )
    n = sizes[1]
    assert sizing.predicted_lower(sizing.assumed(0.8, 0.01), FULL, n, 0.05, 0.8)[0] >= 0.97
    assert sizing.required_requests(sizing.assumed(0.8, 0.05), FULL, 0.97, 0.05, 0) is None, (
        "a true agreement of 0.96 never certifies 0.97"
    )


def test_assumptions_outside_their_ranges_are_refused_and_a_profile_states_them() -> None:
    for accepted, disagreement in ((0.0, 0.1), (1.5, 0.1), (0.5, -0.1), (0.5, 1.1)):
        with pytest.raises(ValueError):
            sizing.assumed(accepted, disagreement)
    prof = sizing.assumed(0.8, 0.25)
    f, d = prof.at(np.asarray([0.0, 0.5]))
    assert np.allclose(f, [0.8, 0.0]) and np.allclose(d, [0.2, 0.0]), "nothing past the grid"
    assert np.allclose(prof.escalation(), [0.2, 1.0])


def test_durations_read_in_minutes_hours_or_days() -> None:
    got = [sizing.duration(h) for h in (None, 0.5, 1.0, 47.9, 48.0, 240.0)]
    assert got == ["n/a", "30 min", "1.0 h", "47.9 h", "2.0 days", "10.0 days"]


def test_a_size_that_passes_at_the_most_is_found_even_past_the_last_doubling() -> None:
    """The doubling overshoots ``most``: ``most`` itself is tried before "no size" (it was
    not, and a size passing at 150,000 of 200,000 came back None)."""
    n = sizing.smallest_passing(lambda n: n >= 150_000, 200_000)
    assert n is not None and 150_000 <= n <= 200_000
