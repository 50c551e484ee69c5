"""The identity registry and twin calls of the official Python service SDK (IoTHubRegistryManager over HTTPS):
create, read, update and delete a device with symmetric keys; read and patch its twin; create X.509 devices (thumbprint
and CA-signed). Prints one line per call
and exits non-zero at the first call the SDK refuses (it raises on any status it does not expect).

usage: registry_calls.py SERVICE_CONNECTION_STRING DEVICE_ID
"""
import base64
import os
import sys

from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import Twin, TwinProperties

connection_string, device_id = sys.argv[1], sys.argv[2]
rm = IoTHubRegistryManager(connection_string)
primary, secondary = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))

device = rm.create_device_with_sas(device_id, primary, secondary, "enabled")
assert device.device_id == device_id and device.authentication.symmetric_key.primary_key == primary, device
print("create_device_with_sas: {} {} generation {}".format(device.device_id, device.status, device.generation_id))
device = rm.get_device(device_id)
assert device.status == "enabled", device.status
print("get_device: {} etag {}".format(device.status, device.etag))
device = rm.update_device_with_sas(device_id, device.etag, primary, secondary, "disabled")
assert device.status == "disabled", device.status
print("update_device_with_sas: {}".format(device.status))
twin = rm.get_twin(device_id)
print("get_twin: version {} desired {}".format(twin.version, twin.properties.desired))
patched = rm.update_twin(device_id, Twin(tags={"site": "lab"}, properties=TwinProperties(desired={"interval": 5})))
assert patched.tags.get("site") == "lab" and patched.properties.desired.get("interval") == 5, patched
print("update_twin: tags {} desired interval {}".format(patched.tags, patched.properties.desired.get("interval")))
replaced = rm.replace_twin(device_id, Twin(tags={"room": "b"}, properties=TwinProperties(desired={"mode": "eco"})))
desired = {k: v for k, v in replaced.properties.desired.items() if not k.startswith("$")}
assert replaced.tags == {"room": "b"} and desired == {"mode": "eco"}, (replaced.tags, desired)
print("replace_twin: tags {} desired {}".format(replaced.tags, desired))
rm.delete_device(device_id)
try:
    rm.get_device(device_id)
    sys.exit("the device is still there after delete_device")
except Exception as gone:
    print("delete_device: gone ({})".format(type(gone).__name__))

thumbprints = [os.urandom(20).hex().upper() for _ in range(2)]
x509 = rm.create_device_with_x509(device_id + "-x509", thumbprints[0], thumbprints[1], "enabled")
assert x509.authentication.type == "selfSigned", x509.authentication.type
assert x509.authentication.x509_thumbprint.primary_thumbprint == thumbprints[0], x509.authentication.x509_thumbprint
print("create_device_with_x509: {} thumbprint {}".format(x509.authentication.type, x509.authentication.x509_thumbprint.primary_thumbprint[:8]))
ca = rm.create_device_with_certificate_authority(device_id + "-ca", "enabled")
assert ca.authentication.type == "certificateAuthority", ca.authentication.type
print("create_device_with_certificate_authority: {}".format(ca.authentication.type))
rm.delete_device(device_id + "-x509")
rm.delete_device(device_id + "-ca")
