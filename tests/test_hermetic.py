"""The suite is hermetic (issue 23): hub access is off and a connection to another machine fails
at once with a message that names the host, while loopback (gloo, TCP stores) still works."""

import os
import socket
import time

import pytest

from pqt_compile.tools.offline import OFFLINE_ENV, hub_offline
from support.hermetic import NetworkAccessInTests, is_local_host

pytestmark = pytest.mark.third_party  # goes through another library (transformers, compressed-tensors, gguf)


def test_hub_switches_are_off_for_every_test():
    for name, value in OFFLINE_ENV.items():
        assert os.environ.get(name) == value, name


def test_a_connection_to_another_machine_fails_at_once_naming_the_host():
    start = time.monotonic()
    with pytest.raises(NetworkAccessInTests, match="huggingface.co"):
        socket.create_connection(("huggingface.co", 443), timeout=30)
    with pytest.raises(NetworkAccessInTests, match="8.8.8.8"):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("8.8.8.8", 53))
    assert time.monotonic() - start < 1.0


def test_loopback_still_works():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(("localhost", server.getsockname()[1]), timeout=5):
            conn, _ = server.accept()
            conn.close()


def test_a_hub_download_fails_fast_with_the_offline_error():
    transformers = pytest.importorskip("transformers")
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        transformers.AutoConfig.from_pretrained("openai-community/gpt2")
    assert time.monotonic() - start < 10.0
    assert "offline" in str(info.value).lower() or isinstance(info.value, NetworkAccessInTests)


def test_is_local_host():
    assert is_local_host("127.0.0.1") and is_local_host("::1") and is_local_host(None)
    assert is_local_host(socket.gethostname())
    assert not is_local_host("huggingface.co") and not is_local_host("10.0.0.1")


def test_hub_offline_keeps_a_users_choice_unless_forced():
    env = {"HF_HUB_OFFLINE": "0"}
    hub_offline(env)
    assert env["HF_HUB_OFFLINE"] == "0" and env["TRANSFORMERS_OFFLINE"] == "1"
    hub_offline(env, force=True)
    assert env["HF_HUB_OFFLINE"] == "1"
