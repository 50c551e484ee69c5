"""Seed 004's service side (the reboot flow of "Get started with device management"), with the official Python
service SDK (the seed's own service code is Node): invoke the direct method `reboot` on the device, then read
properties.reported.iothubDM.reboot.lastReboot from its twin until the device has reported it.

usage: seed004_reboot.py SERVICE_CONNECTION_STRING DEVICE_ID
"""
import sys
import time

from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod

connection_string, device_id = sys.argv[1], sys.argv[2]
registry_manager = IoTHubRegistryManager(connection_string)
result = registry_manager.invoke_device_method(
    device_id, CloudToDeviceMethod(method_name="reboot", payload=None, response_timeout_in_seconds=30))
print("reboot: status {} payload {}".format(result.status, result.payload), flush=True)
if result.status != 200:
    sys.exit("the reboot method did not answer 200")
for _ in range(15):
    twin = registry_manager.get_twin(device_id)
    last_reboot = (twin.properties.reported or {}).get("iothubDM", {}).get("reboot", {}).get("lastReboot")
    if last_reboot:
        print("lastReboot: {}".format(last_reboot), flush=True)
        sys.exit(0)
    time.sleep(2)
sys.exit("no iothubDM.reboot.lastReboot in the twin's reported properties")
