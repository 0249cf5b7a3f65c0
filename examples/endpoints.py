"""Endpoints step by step, static addresses, published ports, and typed errors.

Runs inside an isolated host; run as root:  .venv/bin/python examples/endpoints.py
"""

from __future__ import annotations

import cnm

with cnm.Host.isolated() as host:
    net = host.create_network("app", subnet="10.30.0.0/24", ip_range="10.30.0.128/25")
    web = host.create_sandbox("web")

    # connect() is create_endpoint() plus join(); they can be used apart.
    api = net.create_endpoint("api", ip="10.30.0.10", ports=["127.0.0.1:9000:9000", "53/udp"])
    api.join(web)
    print("joined:", api.interface, api.address, [str(p) for p in api.published])
    api.leave()  # interface and port forwards go; the address stays reserved
    print("left; address kept:", api.address, "sandbox:", api.sandbox)
    api.delete()  # the address goes back to the pool

    auto = net.connect(web)  # next free address of ip_range
    print("connected:", auto.address, "gateway", net.gateway)

    # Bad input is refused before the kernel is touched, with a typed error
    # that is also the builtin it refines.
    for attempt in (
        lambda: host.create_network("bad", subnet="10.0.0.0/33"),
        lambda: host.create_network("clash", subnet="10.30.0.0/16"),
        lambda: net.connect(host.create_sandbox("other"), ip="10.30.0.1"),
    ):
        try:
            attempt()
        except ValueError as exc:
            print(f"{type(exc).__name__}: {exc}")
