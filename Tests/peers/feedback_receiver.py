"""Reads C2D delivery feedback from /messages/serviceBound/feedback (or, with --file-notifications, file-upload
notifications from /messages/serviceBound/filenotifications) with uamqp, as the IoT Hub SDKs do: TLS, SASL
MSSBCBS, a CBS put-token with the service policy's SAS token (audience https://{host}), then a receiver link.
Prints each record as one JSON line, with the message's content type, and accepts every message.

usage: feedback_receiver.py CONNECTION_STRING CA_FILE COUNT [SECONDS] [--release-first] [--file-notifications]
  --release-first: release (do not accept) the first message, then read again: the same records must come back.
  --file-notifications: one notification (a JSON object) per message, instead of a batch (a JSON array).
"""
import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.parse

import uamqp
from azure.core.credentials import AccessToken

cs = dict(part.split("=", 1) for part in sys.argv[1].split(";") if part)
ca, count = sys.argv[2], int(sys.argv[3])
seconds = float(sys.argv[4]) if len(sys.argv) > 4 and not sys.argv[4].startswith("--") else 30
release_first = "--release-first" in sys.argv
file_notifications = "--file-notifications" in sys.argv
endpoint = "/messages/serviceBound/filenotifications" if file_notifications else "/messages/serviceBound/feedback"
host, policy, key = cs["HostName"], cs["SharedAccessKeyName"], cs["SharedAccessKey"]


def token():
    expiry = int(time.time() + 3600)
    signature = hmac.HMAC(base64.b64decode(key), (host + "\n" + str(expiry)).encode(), hashlib.sha256).digest()
    sas = "SharedAccessSignature sr={}&sig={}&se={}&skn={}".format(
        host, urllib.parse.quote(base64.b64encode(signature)), expiry, policy)
    return AccessToken(sas, expiry)


def receiver():
    auth = uamqp.authentication.JWTTokenAuth(
        audience="https://" + host, uri="https://" + host, get_token=token,
        token_type=b"servicebus.windows.net:sastoken", verify=ca)
    auth.update_token()
    # auto_complete=False: this program settles each message itself (accept, or release to test redelivery).
    return uamqp.ReceiveClient("amqps://" + host + endpoint, auth=auth, timeout=2000,
                               auto_complete=False)


seen = 0
deadline = time.time() + seconds
client = receiver()
while seen < count and time.time() < deadline:
    for message in client.receive_message_batch(max_batch_size=10, timeout=2000):
        records = json.loads(b"".join(message.get_data()))
        if file_notifications:
            records = [records]
        if release_first:
            release_first = False
            print(json.dumps({"released": len(records)}), flush=True)
            message.release()
            continue
        for record in records:
            print(json.dumps({"contentType": message.properties.content_type.decode(), **record}), flush=True)
            seen += 1
        message.accept()
client.close()
sys.exit(0 if seen >= count else 1)
