start_all()

machine.wait_for_unit("tinyproxy.service")
machine.wait_for_open_port(8080)

machine.succeed('curl -s http://localhost:8080 |grep -i tinyproxy')
machine.succeed('curl -s http://127.0.0.1:8080 |grep -i tinyproxy')
machine.succeed('curl -s "http://[::1]:8080" |grep -i tinyproxy')

other.wait_for_unit("multi-user.target")
other.fail('curl -s http://machine:8080')
