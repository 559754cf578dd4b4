from tests.conftest import World


def test_submit_and_get(world: World) -> None:
    job = world.submit(actor=World.MEMBER)
    assert world.engine.get_job(job.id, actor=World.MEMBER).status == "queued"
