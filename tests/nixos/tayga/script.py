# start client and server
for machine in client, server:
  machine.systemctl("start network-online.target")
  machine.wait_for_unit("network-online.target")
  machine.log(machine.execute("ip addr")[1])
  machine.log(machine.execute("ip route")[1])
  machine.log(machine.execute("ip -6 route")[1])

# test systemd-networkd and nixos-scripts based router
for router in router_systemd, router_nixos:
  router.start()
  router.systemctl("start network-online.target")
  router.wait_for_unit("network-online.target")
  router.wait_for_unit("tayga.service")
  router.log(machine.execute("ip addr")[1])
  router.log(machine.execute("ip route")[1])
  router.log(machine.execute("ip -6 route")[1])

  with subtest("Wait for tayga"):
    router.wait_for_unit("tayga.service")

  with subtest("Test ICMP server -> client"):
    server.wait_until_succeeds("ping -c 3 192.0.2.42 >&2")

  with subtest("Test ICMP and show a traceroute server -> client"):
    server.wait_until_succeeds("mtr --show-ips --report-wide 192.0.2.42 >&2")

  with subtest("Test ICMP client -> server"):
    client.wait_until_succeeds("ping -c 3 64:ff9b::100.64.0.2 >&2")

  with subtest("Test ICMP and show a traceroute client -> server"):
    client.wait_until_succeeds("mtr --show-ips --report-wide 64:ff9b::100.64.0.2 >&2")

  router.log(router.execute("systemd-analyze security tayga.service")[1])
  router.shutdown()
