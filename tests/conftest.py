import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded on a shared, busy CPU (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tests never write into the user's neuroprobe cache (the concept-set cache is built on
    first use): a private one unless NEUROPROBE_CACHE is set already (tests may still set their
    own with monkeypatch)."""
    import os

    if os.environ.get("NEUROPROBE_CACHE"):
        yield
        return
    os.environ["NEUROPROBE_CACHE"] = str(tmp_path_factory.mktemp("neuroprobe-cache"))
    try:
        yield
    finally:
        os.environ.pop("NEUROPROBE_CACHE", None)
