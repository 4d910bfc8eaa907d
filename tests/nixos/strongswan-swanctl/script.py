start_all()
carol.wait_until_succeeds("ping -c 1 alice")
