"""Kernel tracepoints as an observer: a private tracefs instance for this process's threads.

The global tracing state is never touched. A :class:`TraceSession` creates its
own instance ``instances/kvmconf-<pid>`` (a ring buffer of its own, with its own
event switches), enables only the events it is asked for there, filters them to
this process's threads (``set_event_pid`` with every thread of the process, plus
the ``event-fork`` option so threads started later are added by the kernel), and
reads them from the instance's ``trace_pipe`` without blocking. If tracefs is not
mounted anywhere the session mounts it on a private temporary directory named
with its pid, and unmounts it (lazily) at the end. Other sessions never use that
mount: a concurrent run's unmount cannot pull it away, and files they held in it
cannot keep it mounted. A session about to mount unmounts those of processes that
died before their exit handler ran (SIGKILL), so none is left for good.

An instance costs about 50 ms to create (ring buffers on every CPU), so one
session serves every machine of the process (:func:`session`); a machine takes a
:class:`Subscription` (the events from now on) and looks at them by thread id.
The session ends at :func:`shutdown`, which the process calls at exit; an
instance left behind by a killed process (``kvmconf-<pid>`` of a pid that no
longer exists) is removed by the next session.

What is recorded and what is not: a tracepoint shows that the kernel passed that
point in that thread (``kvm_vcpu_wakeup`` in the vCPU thread leaving
kvm_vcpu_halt, ``kvm_msi_set_irq`` / ``kvm_apic_accept_irq`` in the injecting
thread, ``kvm_userspace_exit`` when KVM_RUN returns). Vendor tracepoints
(``kvm_entry``, ``kvm_exit``, ``kvm_inj_virq``) depend on the vendor module and
may never fire (kvm_pvm); a spec that needs one is skipped when it is not listed,
and a spec must not read absence of an event as proof on its own.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import os
import re
import select
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

#: Where tracefs is usually mounted.
MOUNT_POINTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
INSTANCE_PREFIX = "kvmconf-"

_LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<tid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+\S+\s+"
                   r"(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s?(?P<body>.*)$")


@dataclass(frozen=True)
class TraceEvent:
    tid: int
    cpu: int
    timestamp: float
    name: str
    body: str

    def field(self, key: str) -> str | None:
        """``key``'s value in the event's text (``vec 0``, ``apicid 1``, ``reason KVM_EXIT_IO``)."""
        m = re.search(rf"\b{re.escape(key)}[ =:]\s*(\S+)", self.body)
        return m.group(1) if m else None


def parse(line: str) -> TraceEvent | None:
    m = _LINE.match(line)
    if m is None:
        return None
    return TraceEvent(int(m["tid"]), int(m["cpu"]), float(m["ts"]), m["event"], m["body"])


_libc = ctypes.CDLL(None, use_errno=True)


#: A session's private mount point: /tmp/kvmconf-tracefs-PID-XXXX, PID the process that made it.
PRIVATE_PREFIX = "kvmconf-tracefs-"
#: umount2's lazy flag: the mount leaves the tree now, and the kernel frees it when unused.
MNT_DETACH = 2


def _private_pid(point: str) -> int | None:
    """The process whose private mount ``point`` is (0: a session's of unknown process), or None
    for any other mount point."""
    name = os.path.basename(point)
    if not name.startswith(PRIVATE_PREFIX):
        return None
    pid = name[len(PRIVATE_PREFIX):].split("-")[0]
    return int(pid) if pid.isdigit() else 0


def _mount_points() -> list[str]:
    try:
        with open("/proc/self/mounts") as f:
            return [line.split()[1] for line in f if line.split()[2:3] == ["tracefs"]]
    except OSError:
        return []


def own_mounts() -> list[str]:
    """The tracefs mount points this process sees and may use: the shared ones and its own
    private one (not another session's)."""
    return sorted(p for p in _mount_points() if _private_pid(p) in (None, os.getpid()))


def _unmount_dead() -> None:
    """Private mounts of sessions whose process is gone (killed before its exit handler ran)."""
    for p in _mount_points():
        pid = _private_pid(p)
        if pid and not os.path.exists(f"/proc/{pid}") and _libc.umount2(p.encode(), MNT_DETACH) == 0:
            _rmdir(p)


def _mounted() -> str | None:
    """A mount point of tracefs, from /proc/self/mounts. Another session's private mount does not
    count: it goes when that session ends, and while we held files in it, its unmount would fail
    and leave it behind."""
    points = [p for p in _mount_points() if _private_pid(p) is None]
    for p in MOUNT_POINTS:
        if p in points:
            return p
    return points[0] if points else None


def unavailable(events: Iterable[str] = ()) -> str | None:
    """Why a session with these events (``system/name``) cannot run here, or None."""
    root = _mounted()
    if root is None:
        if os.geteuid() != 0:
            return "tracefs is not mounted and mounting it needs root"
        if not _fs_known():
            return "the kernel has no tracefs (CONFIG_TRACING off)"
        return None  # a session will mount it; the events are checked then
    if not os.access(os.path.join(root, "instances"), os.W_OK):
        return f"no permission to create a tracefs instance under {root}/instances (run as root)"
    missing = [e for e in events if not os.path.isdir(os.path.join(root, "events", e))]
    if missing:
        return f"the kernel has no tracepoint {', '.join(missing)}"
    return None


def _fs_known() -> bool:
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1:] == ["tracefs"] for line in f)
    except OSError:
        return False


@dataclass
class Subscription:
    """The events a session read since this subscription began (all threads of the process)."""

    session: TraceSession
    events: list[TraceEvent] = field(default_factory=list)
    closed: bool = False

    def poll(self) -> list[TraceEvent]:
        """Read what the kernel recorded so far; the full list so far."""
        self.session.poll()
        return self.events

    def of(self, tid: int, name: str | None = None) -> list[TraceEvent]:
        return [e for e in self.events if e.tid == tid and (name is None or e.name == name)]

    def named(self, name: str) -> list[TraceEvent]:
        return [e for e in self.events if e.name == name]

    def close(self) -> None:
        self.closed = True
        self.session.unsubscribe(self)


class TraceSession:
    """One private tracefs instance recording ``events`` of this process's threads."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.root: str | None = None
        self.mounted_here: str | None = None
        self.instance: str | None = None
        self.pipe = -1
        self.enabled: set[str] = set()
        self.subscriptions: list[Subscription] = []
        self._rest = b""

    # -- life -----------------------------------------------------------------------
    def open(self) -> None:
        with self.lock:
            if self.instance is not None:
                return
            root = _mounted()
            if root is None:
                _unmount_dead()
                root = tempfile.mkdtemp(prefix=f"{PRIVATE_PREFIX}{os.getpid()}-")
                if _libc.mount(b"nodev", root.encode(), b"tracefs", 0, None) != 0:
                    err = ctypes.get_errno()
                    os.rmdir(root)
                    raise OSError(err, f"mount -t tracefs: {os.strerror(err)}")
                self.mounted_here = root
            self.root = root
            _remove_stale(root)
            instance = os.path.join(root, "instances", f"{INSTANCE_PREFIX}{os.getpid()}")
            try:
                os.mkdir(instance)
            except FileExistsError:  # ours from an earlier session of this process
                pass
            self.instance = instance
            try:
                self._write("tracing_on", "0")
                # Every thread of the process now, and (event-fork) every thread they start.
                tids = " ".join(sorted(os.listdir("/proc/self/task")))
                self._write("set_event_pid", tids)
                self._write("options/event-fork", "1")
                self._write("trace", "")  # clear
                self.pipe = os.open(os.path.join(instance, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
                self._write("tracing_on", "1")
            except BaseException:
                self.close()
                raise

    def enable(self, events: Iterable[str]) -> None:
        """Switch on events (``system/name``) in this instance only."""
        with self.lock:
            self.open()
            for e in events:
                if e not in self.enabled:
                    self._write(f"events/{e}/enable", "1")
                    self.enabled.add(e)

    def close(self) -> None:
        """Remove the instance (and unmount tracefs if this session mounted it)."""
        with self.lock:
            if self.pipe >= 0:
                os.close(self.pipe)
                self.pipe = -1
            if self.instance is not None:
                try:
                    self._write("tracing_on", "0")
                except OSError:
                    pass
                _rmdir(self.instance)
                self.instance = None
            self.enabled.clear()
            if self.mounted_here is not None:
                # Lazily: a file still open in it (a reader thread's) must not keep it mounted.
                if _libc.umount2(self.mounted_here.encode(), MNT_DETACH) == 0:
                    os.rmdir(self.mounted_here)
                self.mounted_here = None
            self.root = None

    # -- reading --------------------------------------------------------------------
    def subscribe(self, events: Iterable[str]) -> Subscription:
        with self.lock:
            self.enable(events)
            self.poll()  # what came before belongs to nobody
            sub = Subscription(self)
            self.subscriptions.append(sub)
            return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self.lock:
            if sub in self.subscriptions:
                self.subscriptions.remove(sub)

    def poll(self) -> None:
        with self.lock:
            if self.pipe < 0:
                return
            while True:
                try:
                    chunk = os.read(self.pipe, 65536)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EINTR:
                        continue
                    raise
                if not chunk:
                    break
                data = self._rest + chunk
                lines = data.split(b"\n")
                self._rest = lines.pop()
                for raw in lines:
                    ev = parse(raw.decode("utf-8", "replace"))
                    if ev is not None:
                        for sub in self.subscriptions:
                            sub.events.append(ev)

    def wait_for(self, sub: Subscription, found: Callable[[list[TraceEvent]], bool], timeout: float) -> bool:
        """Poll until ``found(sub.events)`` or ``timeout`` seconds; whether it was found."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            if found(sub.poll()):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.pipe >= 0:
                select.select([self.pipe], [], [], min(left, 0.01))

    def _write(self, name: str, value: str) -> None:
        assert self.instance is not None
        with open(os.path.join(self.instance, name), "w") as f:
            f.write(value)


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def _remove_stale(root: str) -> None:
    """Instances of kvmconf processes that no longer exist (killed before their exit handler)."""
    try:
        names = os.listdir(os.path.join(root, "instances"))
    except OSError:
        return
    for name in names:
        pid = name[len(INSTANCE_PREFIX):]
        if name.startswith(INSTANCE_PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.rmdir(os.path.join(root, "instances", name))
            except OSError:
                pass


_SESSION: TraceSession | None = None
_SESSION_LOCK = threading.Lock()


def session() -> TraceSession:
    """The process's session (opened on first use, closed by :func:`shutdown` or at exit)."""
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = TraceSession()
            atexit.register(shutdown)
        return _SESSION


def shutdown() -> None:
    """Close the process's session: no instance, no mount of ours is left."""
    with _SESSION_LOCK:
        if _SESSION is not None:
            _SESSION.close()


def instance_names(root: str | None = None) -> list[str]:
    """The tracefs instances now (for tests that check nothing is left)."""
    root = root or _mounted()
    if root is None:
        return []
    try:
        return sorted(os.listdir(os.path.join(root, "instances")))
    except OSError:
        return []
