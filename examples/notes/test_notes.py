"""The notes service's tests: every request goes through connman's real sessions, on real
servers, and each test starts from empty tables and an empty audit database."""

from notes import manager


async def test_create_commits_through_the_request(connman_client):
    r = await connman_client.post("/notes", params={"title": "first"})
    assert r.status_code == 201
    assert (await connman_client.get("/notes")).json() == ["first"]
    assert (await connman_client.get("/audit")).json() == ["created"]
    assert manager.stats("main")["requests_num"] >= 2  # the requests went through connman


async def test_the_next_test_starts_empty(connman_client):
    assert (await connman_client.get("/notes")).json() == []
    assert (await connman_client.get("/audit")).json() == []
    assert (await connman_client.get("/notes/count")).json() == {"count": 0}


async def test_a_failed_request_keeps_nothing(connman_client):
    await connman_client.post("/notes", params={"title": "kept"})
    r = await connman_client.post("/notes/import", json=["a", "b", "kept"])
    assert r.status_code == 500
    assert (await connman_client.get("/notes")).json() == ["kept"]


async def test_savepoints_in_app_code(connman_client):
    note = (await connman_client.post("/notes", params={"title": "tagged"})).json()
    r = await connman_client.post(f"/notes/{note['id']}/tags", json=["ok", "x" * 41, "fine"])
    assert r.json() == {"kept": 2}


async def test_sessions_outside_requests_see_the_same_data(connman_client):
    await connman_client.post("/notes", params={"title": "one"})
    async with manager.session("main") as db:  # as a background task or a script would
        from notes import Note

        db.add(Note(title="two"))
    assert (await connman_client.get("/notes/count")).json() == {"count": 2}


async def test_arrange_and_assert_with_the_tests_own_session(connman_client, db):
    from notes import Note
    from sqlalchemy import select

    db.add(Note(title="arranged"))
    await db.commit()                                    # the requests see it from here on
    assert (await connman_client.get("/notes")).json() == ["arranged"]
    await connman_client.post("/notes", params={"title": "by request"})
    titles = (await db.execute(select(Note.title).order_by(Note.id))).scalars().all()
    assert titles == ["arranged", "by request"]          # and the session sees what they commit
