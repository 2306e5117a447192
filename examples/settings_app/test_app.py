from app import Note


async def test_create(connman_client, db):
    db.add(Note(title="arranged"))
    await db.commit()
    assert (await connman_client.post("/notes", params={"title": "first"})).status_code == 201
    assert (await connman_client.get("/notes")).json() == ["arranged", "first"]
    assert (await connman_client.get("/events")).json() == ["first"]


async def test_starts_empty(connman_client):
    assert (await connman_client.get("/notes")).json() == []
    assert (await connman_client.get("/events")).json() == []
