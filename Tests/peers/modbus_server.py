#!/usr/bin/env python3
"""A Modbus slave for fieldgate's tests and demo: pymodbus (pinned in requirements.txt) over TCP or RTU.

Several unit ids share one server (one "bus"). Every request and every frame is logged with its time, so tests can
count coalesced requests and check that requests never interleave on a serial line. A unit can be made silent
(no answer at all, as a dead RS-485 slave). Addresses at or above --limit answer exception 2 (illegal address).

Control: JSON lines over a unix socket (--control):
  {"cmd": "log"}                       -> {"requests": [[t, unit, fc, address, count], ...], "frames": [[t, "rx"|"tx", unit, fc, len], ...]}
  {"cmd": "reset"}                     -> clears the log
  {"cmd": "set", "unit": 1, "table": "holding_registers", "address": 0, "values": [1, 2]}
  {"cmd": "get", "unit": 1, "table": "holding_registers", "address": 0, "count": 2} -> {"values": [...]}
  {"cmd": "silent", "unit": 2, "on": true}
When listening it writes {"port": N} (TCP) or {"device": path} to --ready-file.
"""
import argparse
import asyncio
import json
import logging
import os
import sys
import time

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

TABLES = {1: "coils", 2: "discrete_inputs", 3: "holding_registers", 4: "input_registers",
          5: "coils", 15: "coils", 6: "holding_registers", 16: "holding_registers", 23: "holding_registers"}


class Bus(ModbusServerContext):
    """The data of every unit, a request log, and silent units (duck-typed server context)."""

    def __init__(self, units, limit):  # pylint: disable=super-init-not-called
        self.simdevices = []
        self.old_simulator = True  # pymodbus then uses this object as it is
        self.units = {u: {t: {} for t in set(TABLES.values())} for u in units}
        self.limit = limit
        self.silent = set()
        self.requests = []
        self.frames = []

    def _unit(self, unit):
        if unit not in self.units or unit in self.silent:
            raise NoSuchIdException(f"unit {unit}")
        return self.units[unit]

    async def async_getValues(self, device_id, func_code, address, count=1):
        self.requests.append([time.monotonic(), device_id, func_code, address, count])
        tables = self._unit(device_id)
        if address + count > self.limit:
            return ExcCodes.ILLEGAL_ADDRESS
        table = tables[TABLES[func_code]]
        values = [table.get(a, 0) for a in range(address, address + count)]
        return [bool(v) for v in values] if func_code in (1, 2) else values

    async def async_setValues(self, device_id, func_code, address, values):
        self.requests.append([time.monotonic(), device_id, func_code, address, len(values)])
        tables = self._unit(device_id)
        if address + len(values) > self.limit:
            return ExcCodes.ILLEGAL_ADDRESS
        table = tables[TABLES[func_code]]
        for i, v in enumerate(values):
            table[address + i] = int(v)
        return None

    def device_ids(self):
        return list(self.units)

    def trace(self, sending, data):
        # RTU frames start with the unit id; TCP frames carry it after the 6-byte MBAP header.
        offset = 6 if self.tcp else 0
        if len(data) > offset + 1:
            self.frames.append([time.monotonic(), "tx" if sending else "rx", data[offset], data[offset + 1], len(data)])
        return data

    def control(self, request):
        cmd = request.get("cmd")
        if cmd == "log":
            return {"requests": self.requests, "frames": self.frames}
        if cmd == "reset":
            self.requests, self.frames = [], []
            return {"ok": True}
        if cmd == "set":
            table = self.units[request["unit"]][request["table"]]
            for i, v in enumerate(request["values"]):
                table[request["address"] + i] = int(v)
            return {"ok": True}
        if cmd == "get":
            table = self.units[request["unit"]][request["table"]]
            return {"values": [table.get(request["address"] + i, 0) for i in range(request["count"])]}
        if cmd == "silent":
            (self.silent.add if request.get("on", True) else self.silent.discard)(request["unit"])
            return {"ok": True}
        return {"error": f"unknown command {cmd}"}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tcp", help="host:port (port 0 picks one)")
    ap.add_argument("--rtu", help="serial device path (a pty from socat)")
    ap.add_argument("--baud", type=int, default=19200)
    ap.add_argument("--units", default="1")
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--control", required=True)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--init", help="JSON list of set commands to run first")
    ap.add_argument("--wander", action="append", default=[], metavar="UNIT:TABLE:ADDRESS",
                    help="a register that drifts by -5..+5 every second (the demo's live values)")
    args = ap.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    bus = Bus([int(u) for u in args.units.split(",")], args.limit)
    bus.tcp = args.tcp is not None
    for cmd in json.loads(args.init) if args.init else []:
        bus.control(dict(cmd, cmd="set"))
    if args.tcp:
        host, port = args.tcp.rsplit(":", 1)
        if int(port) == 0:  # pick a free port (pymodbus does not report the one the kernel chose)
            import socket
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        server = ModbusTcpServer(bus, address=(host, int(port)), framer=FramerType.SOCKET,
                                 ignore_missing_devices=True, trace_packet=bus.trace)
        ready = {"port": int(port)}
    else:
        server = ModbusSerialServer(bus, port=args.rtu, framer=FramerType.RTU, baudrate=args.baud,
                                    ignore_missing_devices=True, trace_packet=bus.trace)
        ready = {"device": args.rtu}

    async def handle(reader, writer):  # one request per connection, as fieldgate's ControlClient expects
        line = await reader.readline()
        try:
            answer = bus.control(json.loads(line))
        except Exception as exc:  # pylint: disable=broad-except
            answer = {"error": str(exc)}
        writer.write((json.dumps(answer) + "\n").encode())
        await writer.drain()
        writer.close()

    if os.path.exists(args.control):
        os.unlink(args.control)
    control = await asyncio.start_unix_server(handle, path=args.control)
    await server.serve_forever(background=True)
    with open(args.ready_file + ".tmp", "w") as f:
        json.dump(ready, f)
    os.rename(args.ready_file + ".tmp", args.ready_file)
    async def wander():
        import random
        while True:
            await asyncio.sleep(1)
            for spec in args.wander:
                unit, table, address = spec.split(":")
                t = bus.units[int(unit)][table]
                t[int(address)] = (t.get(int(address), 0) + random.randint(-5, 5)) & 0xFFFF

    async with control:
        await wander() if args.wander else await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
