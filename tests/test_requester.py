import adapter.requester

def test_x():
    assert adapter.requester
