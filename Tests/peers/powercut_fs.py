#!/usr/bin/env python3
"""A FUSE file system that forgets what was not synced: the spool's power-loss test (Tests/SpoolTests).

Everything lives in memory. A file keeps its durable bytes (as of its last fsync/fdatasync) and the writes and
truncations since. A directory keeps its durable entries (as of its last fsync): a new, renamed or removed name is
not durable before its directory is synced, as POSIX promises and no more.

Writing to /.powercut cuts the power: every file keeps its durable bytes plus a random prefix of its pending
writes, the last of them possibly cut short (the disk wrote part of what the page cache held, in file order);
every directory keeps its durable entries. Reading /.powercut returns the counters. Writes are synchronous
(no FUSE write-back cache), so a killed process leaves nothing in the kernel that this file system did not see.

usage: powercut_fs.py MOUNTPOINT [--seed N]     (root; libfuse2 + fusepy; runs until unmounted)
"""
import argparse
import errno
import random
import stat
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations

CONTROL = "/.powercut"


class Node:
    def __init__(self, is_dir, mode):
        self.is_dir = is_dir
        self.mode = mode
        self.mtime = time.time()
        if is_dir:
            self.entries = {}
            self.durable_entries = {}
        else:
            self.data = bytearray()
            self.durable = bytearray()
            self.pending = []  # ("w", offset, bytes) | ("t", length), oldest first


def apply(buf, op, limit=None):
    if op[0] == "t":
        del buf[op[1]:]
        buf.extend(bytes(max(0, op[1] - len(buf))))
        return
    _, offset, data = op
    if limit is not None:
        data = data[:limit]
    end = offset + len(data)
    if len(buf) < offset:
        buf.extend(bytes(offset - len(buf)))
    buf[offset:end] = data


class PowerCutFS(Operations):
    def __init__(self, seed):
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.root = Node(True, stat.S_IFDIR | 0o755)
        self.nodes = [self.root]  # every node since the last cut: a cut restores unlinked-but-durable ones too
        self.handles = {}
        self.next_handle = 1
        self.cuts = self.dropped_writes = self.torn_writes = self.kept_writes = 0

    # -- names --
    def split(self, path):
        parts = [p for p in path.split("/") if p]
        return parts[:-1], (parts[-1] if parts else "")

    def lookup(self, path):
        node = self.root
        for part in [p for p in path.split("/") if p]:
            if not node.is_dir or part not in node.entries:
                raise FuseOSError(errno.ENOENT)
            node = node.entries[part]
        return node

    def parent(self, path):
        dirs, name = self.split(path)
        node = self.lookup("/" + "/".join(dirs))
        if not node.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return node, name

    def node_for(self, path, fh):
        if fh and fh in self.handles:
            return self.handles[fh]
        return self.lookup(path)

    def new_handle(self, node):
        fh = self.next_handle
        self.next_handle += 1
        self.handles[fh] = node
        return fh

    # -- the cut --
    def power_cut(self):
        for node in self.nodes:
            if node.is_dir:
                node.entries = dict(node.durable_entries)
                continue
            survived = bytearray(node.durable)
            keep = self.random.randint(0, len(node.pending))
            for op in node.pending[:keep]:
                apply(survived, op)
            self.kept_writes += keep
            rest = node.pending[keep:]
            if rest and rest[0][0] == "w" and self.random.random() < 0.5:
                apply(survived, rest[0], limit=self.random.randint(0, len(rest[0][2])))
                self.torn_writes += 1
                rest = rest[1:]
            self.dropped_writes += len(rest)
            node.data = survived
            node.durable = bytearray(survived)
            node.pending = []
        self.cuts += 1
        # What no directory names any more is gone for good (an unlinked file whose removal was durable).
        reachable, stack = [], [self.root]
        while stack:
            node = stack.pop()
            reachable.append(node)
            if node.is_dir:
                stack.extend(node.entries.values())
        self.nodes = reachable
        self.handles = {}

    # -- attributes --
    def getattr(self, path, fh=None):
        with self.lock:
            if path == CONTROL:
                return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": 0}
            node = self.node_for(path, fh)
            size = len(node.entries) if node.is_dir else len(node.data)
            return {"st_mode": node.mode, "st_nlink": 2 if node.is_dir else 1, "st_size": size, "st_uid": 0,
                    "st_gid": 0, "st_mtime": node.mtime, "st_ctime": node.mtime, "st_atime": node.mtime}

    def chmod(self, path, mode):
        with self.lock:
            node = self.lookup(path)
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)

    def chown(self, path, uid, gid):
        pass

    def utimens(self, path, times=None):
        with self.lock:
            if path != CONTROL:
                self.lookup(path).mtime = times[1] if times else time.time()

    def access(self, path, amode):
        with self.lock:
            if path != CONTROL:
                self.lookup(path)

    def statfs(self, path):
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 20, "f_bfree": 1 << 19, "f_bavail": 1 << 19,
                "f_files": 1 << 16, "f_ffree": 1 << 15, "f_namemax": 255}

    # -- directories --
    def readdir(self, path, fh):
        with self.lock:
            return [".", ".."] + list(self.lookup(path).entries)

    def mkdir(self, path, mode):
        with self.lock:
            parent, name = self.parent(path)
            if name in parent.entries:
                raise FuseOSError(errno.EEXIST)
            node = Node(True, stat.S_IFDIR | (mode & 0o7777))
            self.nodes.append(node)
            parent.entries[name] = node

    def rmdir(self, path):
        with self.lock:
            parent, name = self.parent(path)
            node = parent.entries.get(name)
            if node is None:
                raise FuseOSError(errno.ENOENT)
            if node.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]

    def fsyncdir(self, path, datasync, fh):
        with self.lock:
            node = self.lookup(path)
            node.durable_entries = dict(node.entries)

    # -- files --
    def create(self, path, mode, fi=None):
        with self.lock:
            parent, name = self.parent(path)
            node = parent.entries.get(name)
            if node is None:
                node = Node(False, stat.S_IFREG | (mode & 0o7777))
                self.nodes.append(node)
                parent.entries[name] = node
            return self.new_handle(node)

    def open(self, path, flags):
        with self.lock:
            if path == CONTROL:
                return 0
            # O_TRUNC never arrives here: without atomic_o_trunc the kernel truncates through truncate().
            return self.new_handle(self.lookup(path))

    def read(self, path, size, offset, fh):
        with self.lock:
            if path == CONTROL:
                text = (f"cuts {self.cuts} kept {self.kept_writes} torn {self.torn_writes} "
                        f"dropped {self.dropped_writes}\n").encode()
                return text[offset:offset + size]
            node = self.node_for(path, fh)
            return bytes(node.data[offset:offset + size])

    def write(self, path, data, offset, fh):
        with self.lock:
            if path == CONTROL:
                self.power_cut()
                return len(data)
            node = self.node_for(path, fh)
            op = ("w", offset, bytes(data))
            apply(node.data, op)
            node.pending.append(op)
            node.mtime = time.time()
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.lock:
            if path == CONTROL:
                return
            node = self.node_for(path, fh)
            op = ("t", length)
            apply(node.data, op)
            node.pending.append(op)

    def fsync(self, path, datasync, fh):
        with self.lock:
            node = self.node_for(path, fh)
            node.durable = bytearray(node.data)
            node.pending = []

    def flush(self, path, fh):
        pass

    def release(self, path, fh):
        with self.lock:
            self.handles.pop(fh, None)

    def unlink(self, path):
        with self.lock:
            parent, name = self.parent(path)
            if name not in parent.entries:
                raise FuseOSError(errno.ENOENT)
            del parent.entries[name]

    def rename(self, old, new):
        with self.lock:
            old_parent, old_name = self.parent(old)
            new_parent, new_name = self.parent(new)
            if old_name not in old_parent.entries:
                raise FuseOSError(errno.ENOENT)
            new_parent.entries[new_name] = old_parent.entries.pop(old_name)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mountpoint")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"powercut_fs: seed {seed}", flush=True)
    # hard_remove: an unlinked open file stays reachable through its handle (no .fuse_hidden renames in listings);
    # zero timeouts: after a cut the kernel asks again instead of trusting cached sizes and names.
    FUSE(PowerCutFS(seed), args.mountpoint, foreground=True, nothreads=True, hard_remove=True,
         attr_timeout=0, entry_timeout=0, negative_timeout=0, direct_io=True)


if __name__ == "__main__":
    sys.exit(main())
