"""Tiny Redis helpers for benches/run.sh (raw RESP, no client library).

  python3 benches/redis.py ping PORT            exit 0 if a Redis answers PONG
  python3 benches/redis.py drop PORT PREFIX     delete the keys under PREFIX:
                                                (SCAN + DEL; never FLUSHALL)
"""
import socket
import sys


def _command(sock, *args):
    out = f"*{len(args)}\r\n".encode()
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += f"${len(a)}\r\n".encode() + a + b"\r\n"
    sock.sendall(out)
    return _reply(sock.makefile("rb"))


def _reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b"-"):
        return rest.decode()
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode()
    if kind == b"*":
        return [_reply(f) for _ in range(int(rest))]
    raise ValueError(f"unexpected reply {line!r}")


def _connect(port):
    return socket.create_connection(("127.0.0.1", int(port)), timeout=2)


def ping(port):
    try:
        with _connect(port) as s:
            sys.exit(0 if _command(s, "PING") == "PONG" else 1)
    except OSError:
        sys.exit(1)


def drop(port, prefix):
    if not prefix.startswith("bench-"):
        sys.exit("refusing to delete keys outside a bench-… prefix")
    deleted = 0
    with _connect(port) as s:
        cursor = "0"
        while True:
            cursor, keys = _command(s, "SCAN", cursor, "MATCH", prefix + ":*", "COUNT", "1000")
            if keys:
                deleted += _command(s, "DEL", *keys)
            if cursor == "0":
                break
    print(deleted)


if __name__ == "__main__":
    commands = {"ping": ping, "drop": drop}
    commands[sys.argv[1]](*sys.argv[2:])
