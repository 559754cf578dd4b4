"""GET /api/v1/metrics: the SPEC 5.5 shape for members; nothing for anyone else."""

from __future__ import annotations

import pytest

from tests.conftest import World
from tests.integration.api_support import Api, assert_error


@pytest.fixture
def api(world: World) -> Api:
    return Api(world.engine)


def test_member_gets_the_shape_with_zeros(api: Api, world: World) -> None:
    world.submit(actor=World.MEMBER)
    r = api.get("/metrics", World.MEMBER, params={"organization": "acme", "window_hours": 6})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["organization"] == "acme" and body["window_hours"] == 6
    assert body["jobs_by_status"] == {
        "pending": 0, "queued": 1, "running": 0, "retrying": 0, "completed": 0,
        "dead_letter": 0, "canceled": 0,
    }
    assert body["queue_depth_by_priority"] == {"critical": 0, "high": 0, "normal": 1, "low": 0}
    assert set(body) == {"organization", "window_hours", "jobs_by_status",
                         "queue_depth_by_priority", "processing_time", "failure_rate"}


@pytest.mark.parametrize("user", [World.INACTIVE, World.OTHER, World.NOBODY])
def test_outsiders_get_one_403_for_existing_and_missing_organizations(
        api: Api, world: World, user: str) -> None:
    existing = assert_error(api.get("/metrics", user, params={"organization": "acme"}),
                            403, "forbidden")
    missing = assert_error(api.get("/metrics", user, params={"organization": "no-such"}),
                           403, "forbidden")
    assert existing["message"] == missing["message"]
    assert "acme" not in existing["message"]


@pytest.mark.parametrize("window", ["0", "-1", "9000", "abc"])
def test_bad_window_is_422(api: Api, window: str) -> None:
    r = api.get("/metrics", World.MEMBER, params={"organization": "acme", "window_hours": window})
    assert_error(r, 422, "validation_error")


def test_unauthenticated_is_401(api: Api) -> None:
    assert_error(api.get("/metrics", None, params={"organization": "acme"}), 401, "unauthorized")
