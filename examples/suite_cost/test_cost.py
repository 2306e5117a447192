import pytest


@pytest.mark.parametrize("n", range(300))
async def test_two_writes_one_read(client, n):
    for name in (f"a{n}", f"b{n}"):
        assert (await client.post("/items", params={"name": name})).status_code == 201
    assert (await client.get("/items")).json() == [f"a{n}", f"b{n}"]
