"""The demo's run id is in every event id and site id it sends: it must never embed a national
identity number, which carebus refuses in any identifier (a CI run failed at 22:30 UTC, when the
14-digit timestamp it used held a valid fødselsnummer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from carebus.domain.text import embeds_nin
from producers.scenario import run_id


def test_no_second_of_a_day_gives_a_run_id_that_embeds_a_nin() -> None:
    start = datetime(2026, 12, 7, tzinfo=UTC)
    for second in range(0, 86400, 7):
        moment = start + timedelta(seconds=second)
        assert not embeds_nin(f"site-{run_id(moment)}"), run_id(moment)
    # The old form failed here, so the test can tell the two apart.
    assert embeds_nin("site-" + datetime(2026, 12, 7, 22, 30, tzinfo=UTC).strftime("%Y%m%d%H%M%S"))
