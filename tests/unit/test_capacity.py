"""Capacity measurement, with a fake NVML standing in for a GPU host."""

from types import SimpleNamespace

from maskd.node import Node
from worker.capacity import Capacity, GpuInfo, detect_gpus, measure


class FakeNVML:
    """The slice of pynvml that worker.capacity uses."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus=(), fail_init=False):
        self.gpus = list(gpus)
        self.fail_init = fail_init
        self.shutdown_called = False

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdown_called = True

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.gpus[i]

    def nvmlDeviceGetName(self, h):
        return h["name"].encode()  # older bindings return bytes

    def nvmlDeviceGetUUID(self, h):
        return h["uuid"]

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=h["mem"])


def test_gpus_found_through_nvml():
    nvml = FakeNVML([{"name": "NVIDIA H100", "uuid": "GPU-1", "mem": 80 << 30}])
    gpus, note = detect_gpus(nvml)
    assert gpus == (GpuInfo(name="NVIDIA H100", memory_mb=80 << 10, uuid="GPU-1"),)
    assert "1 GPU" in note and nvml.shutdown_called


def test_no_driver_means_no_gpus_and_says_why():
    gpus, note = detect_gpus(FakeNVML(fail_init=True))
    assert gpus == () and "NVML unavailable" in note


def test_the_real_nvml_on_this_machine_does_not_raise():
    gpus, note = detect_gpus()
    assert isinstance(gpus, tuple) and note


def test_measure_caps_with_config_and_reports_gpus(tmp_path):
    nvml = FakeNVML(
        [{"name": "A", "uuid": "u", "mem": 1 << 30}, {"name": "B", "uuid": "v", "mem": 2 << 30}]
    )
    cap = measure(tmp_path, cpu=1, memory_mb=64, disk_mb=10, nvml=nvml)
    assert (cap.cpu, cap.memory_mb, cap.disk_mb) == (1, 64, 10)
    assert [g.name for g in cap.gpus] == ["A", "B"]
    assert measure(tmp_path, gpus=False, nvml=nvml).gpus == ()
    uncapped = measure(tmp_path, nvml=FakeNVML())
    assert uncapped.cpu >= 1 and uncapped.memory_mb > 64


def test_capacity_change_threshold_for_republishing():
    base = Capacity(cpu=4, memory_mb=8000, disk_mb=100_000, gpus=())
    changed = Node._capacity_changed
    assert changed(None, base)
    assert not changed(base, Capacity(4, 8100, 100_500, ()))  # page-cache wobble
    assert changed(base, Capacity(4, 6000, 100_000, ()))  # >10 % less memory
    assert changed(base, Capacity(2, 8000, 100_000, ()))
    assert changed(base, Capacity(4, 8000, 100_000, (GpuInfo("A", 1, "u"),)))
