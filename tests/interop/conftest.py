"""Fixtures: token servers started from the binary, stopped at the end of the session."""

import os

import pytest

import envoystack
from tokenserver import SERVER_BIN, GrpcTokenServer, TokenServer

RUNNING: list[TokenServer] = []


@pytest.fixture(scope="session")
def make_server(tmp_path_factory):
    """Factory: start one more token server in its own directory."""
    if not (SERVER_BIN.is_file() and os.access(SERVER_BIN, os.X_OK)):
        pytest.fail(f"no token-server binary at {SERVER_BIN} (set TOKENMESH_SERVER_BIN)", pytrace=False)

    def make(signing="ES256", kind=TokenServer):
        srv = kind(tmp_path_factory.mktemp(f"{'grpc' if kind is GrpcTokenServer else 'server'}-{signing.lower()}"),
                   signing)
        RUNNING.append(srv)
        return srv.start()

    yield make
    for srv in RUNNING:
        srv.stop()


@pytest.fixture(scope="session")
def server(make_server):
    return make_server()


@pytest.fixture(scope="session")
def stubs():
    """The Python modules protoc makes of proto/tokenmesh/v1/*.proto (generated at test time, cached)."""
    import grpcstubs

    return grpcstubs.load()


@pytest.fixture(scope="session")
def grpc_server(make_server, stubs):
    """A token server serving the gRPC API, with an admin token and the exchange/share policies."""
    return make_server(kind=GrpcTokenServer)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and report.when == "call":
        for srv in RUNNING:
            report.sections.append((f"token-server log {srv.root.name}", srv.log_tail()))
        for proc in envoystack.LOGS:  # the sidecars and Envoys of test_envoy.py
            report.sections.append((proc.title, proc.log_tail()))
    return report
