"""The Raft link cipher: what pysyncobj's TcpConnection relies on."""

import pytest

from raftlog.raft_cipher import RaftCipher


def test_round_trip_and_timestamp():
    a, b = RaftCipher("cluster secret"), RaftCipher("cluster secret")
    token = a.encrypt_at_time(b"pickled message", 1234)
    assert b"pickled message" not in token
    assert b.extract_timestamp(token) == 1234
    assert b.decrypt(token) == b"pickled message"
    assert b.decrypt(a.encrypt_at_time(b"x", 5)) == b"x"  # decrypt alone works too


def test_wrong_secret_or_altered_message_is_refused():
    token = RaftCipher("cluster secret").encrypt_at_time(b"append_entries", 7)
    with pytest.raises(Exception):
        RaftCipher("another secret").extract_timestamp(token)
    for i in (0, 8, 20, len(token) - 1):  # timestamp, nonce, body, tag
        bad = bytearray(token)
        bad[i] ^= 1
        with pytest.raises(Exception):
            RaftCipher("cluster secret").extract_timestamp(bytes(bad))
    with pytest.raises(Exception):
        RaftCipher("cluster secret").decrypt(token[:10])


def test_same_plaintext_never_gives_the_same_token():
    c = RaftCipher("cluster secret")
    assert c.encrypt_at_time(b"m", 1) != c.encrypt_at_time(b"m", 1)
