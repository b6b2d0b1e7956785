#!/usr/bin/env python3
"""gRPC side of the token-exchange case of bench/run.sh.

  grpc-exchange.py encode <subject_token> <audience> <out-file>
      Writes one gRPC request body for tokenmesh.v1.TokenService/Exchange
      (proto/tokenmesh/v1/token.proto): the 5-byte length prefix (0 = not
      compressed, 4-byte big-endian length) and the ExchangeRequest encoded by
      hand (field 1 subject_token, field 3 audience). Standard library only:
      this file is what h2load sends on every request.

  grpc-exchange.py check <host:port> <authorization> <body-file>
      Makes one real gRPC call with grpcio, sending the message inside
      <body-file> unchanged, and prints the ExchangeResponse as JSON
      (access_token, issued_token_type, expires_in, scopes). Exits 1 with the
      gRPC status when the call fails, or when the file is not one framed
      message.
"""

import json
import struct
import sys

METHOD = "/tokenmesh.v1.TokenService/Exchange"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string_field(number: int, value: str) -> bytes:
    data = value.encode()
    return varint(number << 3 | 2) + varint(len(data)) + data


def encode(subject_token: str, audience: str) -> bytes:
    message = string_field(1, subject_token) + string_field(3, audience)
    return b"\x00" + struct.pack(">I", len(message)) + message


def read_varint(buf: bytes, i: int):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def decode_response(buf: bytes) -> dict:
    """ExchangeResponse: 1 access_token, 2 issued_token_type, 3 expires_in (int64), 4 repeated scopes."""
    out = {"access_token": "", "issued_token_type": "", "expires_in": 0, "scopes": []}
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(buf, i)
            if number == 3:
                out["expires_in"] = value
        elif wire == 2:
            size, i = read_varint(buf, i)
            value, i = buf[i : i + size].decode(), i + size
            if number == 1:
                out["access_token"] = value
            elif number == 2:
                out["issued_token_type"] = value
            elif number == 4:
                out["scopes"].append(value)
        else:
            raise ValueError(f"unexpected wire type {wire} for field {number}")
    return out


def check(target: str, authorization: str, body_file: str) -> int:
    import grpc  # only this mode needs grpcio

    body = open(body_file, "rb").read()
    if len(body) < 5 or body[0] != 0 or struct.unpack(">I", body[1:5])[0] != len(body) - 5:
        print(f"{body_file} is not one uncompressed length-prefixed gRPC message", file=sys.stderr)
        return 1
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
        try:
            response = call(body[5:], metadata=[("authorization", authorization)], timeout=10)
        except grpc.RpcError as err:
            print(f"gRPC {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    print(json.dumps(decode_response(response)))
    return 0


def main(argv):
    if len(argv) == 4 and argv[0] == "encode":
        with open(argv[3], "wb") as f:
            f.write(encode(argv[1], argv[2]))
        return 0
    if len(argv) == 4 and argv[0] == "check":
        return check(*argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
