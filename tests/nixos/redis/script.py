start_all()
machine.wait_for_unit("redis")
machine.wait_for_unit("redis-test")

# The unnamed Redis server still opens a port for backward-compatibility
machine.wait_for_open_port(6379)

machine.wait_for_file("/run/redis/redis.sock")
machine.wait_for_file("/run/redis-test/redis.sock")

# The unix socket is accessible to the redis group
machine.succeed('su member -c "/usr/bin/redis-cli ping | grep PONG"')
machine.succeed('su member-test -c "/usr/bin/redis-cli ping | grep PONG"')

machine.succeed("/usr/bin/redis-cli ping | grep PONG")
machine.succeed("/usr/bin/redis-cli -s /run/redis/redis.sock ping | grep PONG")
machine.succeed("/usr/bin/redis-cli -s /run/redis-test/redis.sock ping | grep PONG")
