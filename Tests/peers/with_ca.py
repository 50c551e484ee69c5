"""Runs a Python program (argv[2:]) trusting the CA in argv[1] for AMQP too.

uamqp, which azure-iot-hub sends C2D messages with, trusts only certifi's bundle (azure-iot-hub passes no CA
setting and reads no environment variable); requests reads REQUESTS_CA_BUNDLE. So the program is run unchanged
with certifi.where() answering the given bundle.
"""
import os
import runpy
import sys

import certifi

ca = os.path.abspath(sys.argv[1])
certifi.where = lambda: ca
os.environ["REQUESTS_CA_BUNDLE"] = ca  # over any machine-wide setting: this program talks to the hub
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
