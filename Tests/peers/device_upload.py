"""A device's file upload to IoT Hub, done the way the device SDKs do it, over HTTPS with requests: POST
/devices/{id}/files for a SAS URI, PUT the blob (x-ms-blob-type: BlockBlob) to the storage it names, POST
/devices/{id}/files/notifications. Signs with the device's key from its connection string. Prints the blob name.

usage: device_upload.py DEVICE_CONNECTION_STRING CA_FILE BLOB_NAME TEXT
"""
import base64
import hashlib
import hmac
import os
import sys
import time
import urllib.parse

import requests

cs = dict(part.split("=", 1) for part in sys.argv[1].split(";") if part)
ca, name, text = sys.argv[2], sys.argv[3], sys.argv[4]
host, device, key = cs["HostName"], cs["DeviceId"], cs["SharedAccessKey"]
resource = host + "/devices/" + device
expiry = int(time.time() + 3600)
signature = hmac.HMAC(base64.b64decode(key), (urllib.parse.quote(resource, safe="") + "\n" + str(expiry)).encode(), hashlib.sha256).digest()
token = "SharedAccessSignature sr={}&sig={}&se={}".format(
    urllib.parse.quote(resource, safe=""), urllib.parse.quote(base64.b64encode(signature), safe=""), expiry)
api = "?api-version=2021-04-12"
port = os.environ.get("HUB_HTTPS_PORT", "443")  # IoT Hub's is 443; a local hub's may differ
base = "https://" + host + ("" if port == "443" else ":" + port) + "/devices/" + urllib.parse.quote(device, safe="")

start = requests.post(base + "/files" + api, json={"blobName": name}, headers={"Authorization": token}, verify=ca, timeout=30)
start.raise_for_status()
sas = start.json()
url = "https://{}/{}/{}{}".format(sas["hostName"], sas["containerName"], urllib.parse.quote(sas["blobName"]), sas["sasToken"])
put = requests.put(url, data=text.encode(), headers={"x-ms-blob-type": "BlockBlob"}, verify=ca, timeout=30)
done = requests.post(base + "/files/notifications" + api, headers={"Authorization": token}, verify=ca, timeout=30,
                     json={"correlationId": sas["correlationId"], "isSuccess": put.status_code == 201,
                           "statusCode": put.status_code, "statusDescription": put.reason})
done.raise_for_status()
if put.status_code != 201:
    sys.exit("blob PUT answered {} {}".format(put.status_code, put.text))
print(sas["blobName"])
