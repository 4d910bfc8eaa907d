machine.wait_for_unit("bind.service")
machine.succeed("host 192.168.0.1 127.0.0.1 | grep -qF ns.example.org")
