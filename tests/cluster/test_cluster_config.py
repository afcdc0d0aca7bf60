"""A group member's config: what is missing or wrong is said before anything starts."""

import subprocess
import sys

import pytest

from tidestore.config import load

BASE = """
node_id = "n1"
listen = "127.0.0.1:9000"
raft_listen = "127.0.0.1:9100"
data_listen = "127.0.0.1:9200"
control_listen = "127.0.0.1:9300"
cluster_secret = "s"
access_key = "AK"
secret_key = "SK"
[cold]
stores = ["file:///srv/cold/a", "file:///srv/cold/b", "file:///srv/cold/c"]
k = 2
m = 1
[[peers]]
id = "n2"
raft = "127.0.0.1:9101"
data = "127.0.0.1:9201"
control = "127.0.0.1:9301"
"""


def write(tmp_path, text):
    p = tmp_path / "node.toml"
    p.write_text(text)
    return str(p)


def test_a_complete_member_config_loads(tmp_path):
    cfg = load(write(tmp_path, BASE))
    assert cfg.clustered and cfg.node_id == "n1" and cfg.peers[0]["id"] == "n2"


@pytest.mark.parametrize("change, message", [
    (('cluster_secret = "s"\n', ""), "cluster_secret"),
    (('raft_listen = "127.0.0.1:9100"\n', ""), "raft_listen"),
    (('access_key = "AK"\nsecret_key = "SK"\n', ""), "same access_key"),
    (('control = "127.0.0.1:9301"\n', ""), "needs id, raft, data, control"),
    (('id = "n2"', 'id = "n1"'), "appears twice"),
    (('raft = "127.0.0.1:9101"', 'raft = "nowhere"'), "HOST:PORT"),
    (('id = "n2"', 'id = "n2"\nzone = "a"'), "needs id, raft, data, control"),
    (('stores = ["file:///srv/cold/a", "file:///srv/cold/b", "file:///srv/cold/c"]\n', ""),
     "needs [cold] stores"),
    (("m = 1", "m = 0"), "bad parameters"),
    (("m = 1", "m = 1\nhot_budgett = 5"), "unknown [cold] keys: hot_budgett"),
    (('"file:///srv/cold/c"', '"ftp://x"'), "is not file://DIR or s3://"),
])
def test_a_broken_member_config_is_refused_with_a_reason(tmp_path, change, message):
    old, new = change
    assert old in BASE
    with pytest.raises(ValueError) as err:
        load(write(tmp_path, BASE.replace(old, new)))
    assert message in str(err.value)


def test_serve_says_what_is_wrong_and_exits_2(tmp_path):
    path = write(tmp_path, BASE.replace('cluster_secret = "s"\n', ""))
    out = subprocess.run([sys.executable, "-m", "tidestore", "serve", "--config", path],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "cluster_secret" in out.stderr and "Traceback" not in out.stderr
