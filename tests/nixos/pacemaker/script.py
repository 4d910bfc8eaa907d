import re
import time

start_all()

node1.wait_until_succeeds("corosync-quorumtool")
node1.wait_for_unit("pacemaker.service")
node2.wait_until_succeeds("corosync-quorumtool")
node2.wait_for_unit("pacemaker.service")
node3.wait_until_succeeds("corosync-quorumtool")
node3.wait_for_unit("pacemaker.service")


# No STONITH device
node1.succeed("crm_attribute -t crm_config -n stonith-enabled -v false")
# Configure the cat resource
node1.succeed("cibadmin --replace --scope resources --xml-file /etc/pacemaker-test/cib-resources.xml")

# wait until the service is started
while True:
  output = node1.succeed("crm_resource -r cat --locate")
  match = re.search("is running on: (.+)", output)
  if match:
    for machine in machines:
      if machine.name == match.group(1):
        current_node = machine
    break
  time.sleep(1)

current_node.log("Service running here!")
current_node.crash()

# pick another node that's still up
for machine in machines:
  if machine.booted:
    check_node = machine
# find where the service has been started next
while True:
  output = check_node.succeed("crm_resource -r cat --locate")
  match = re.search("is running on: (.+)", output)
  # output will remain the old current_node until the crash is detected by pacemaker
  if match and match.group(1) != current_node.name:
    for machine in machines:
      if machine.name == match.group(1):
        next_node = machine
    break
  time.sleep(1)

next_node.log("Service migrated here!")
