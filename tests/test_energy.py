"""Energy meters, each fed a fixture tree in its real sysfs format (no GPU, no RAPL here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgepipe.runtime.energy import MeterUnavailable, measure_window, open_meter
from edgepipe.runtime.energy.android import AndroidBatteryMeter
from edgepipe.runtime.energy.jetson import JetsonMeter, parse_tegrastats
from edgepipe.runtime.energy.rapl import RaplMeter

WRAP_UJ = 262143328850  # a real max_energy_range_uj


def _rapl_tree(root: Path, packages: int = 2, start_uj: int = 1000) -> list[Path]:
    counters = []
    for index in range(packages):
        zone = root / "sys/class/powercap" / f"intel-rapl:{index}"
        zone.mkdir(parents=True)
        (zone / "name").write_text(f"package-{index}\n")
        (zone / "energy_uj").write_text(f"{start_uj}\n")
        (zone / "max_energy_range_uj").write_text(f"{WRAP_UJ}\n")
        sub = root / "sys/class/powercap" / f"intel-rapl:{index}:0"  # a core sub-zone: not summed
        sub.mkdir()
        (sub / "energy_uj").write_text("999999999\n")
        (sub / "max_energy_range_uj").write_text(f"{WRAP_UJ}\n")
        counters.append(zone / "energy_uj")
    return counters


class _SimulatedPackage(threading.Thread):
    """Advances RAPL counters at `watts` (changeable), as the kernel would."""

    def __init__(self, counters: list[Path], watts: float) -> None:
        super().__init__(daemon=True)
        self.counters, self.watts, self._halt = counters, watts, threading.Event()

    def run(self) -> None:
        last = time.perf_counter()
        while not self._halt.is_set():
            time.sleep(0.005)
            now = time.perf_counter()
            for counter in self.counters:  # each package draws watts / len(counters)
                value = int(counter.read_text()) + int(self.watts / len(self.counters) * (now - last) * 1e6)
                staged = counter.with_name(".energy_uj.new")  # sysfs reads are atomic; so is this
                staged.write_text(f"{value % WRAP_UJ}\n")
                os.replace(staged, counter)
            last = now

    def stop(self) -> None:
        self._halt.set()
        self.join()


def test_rapl_sums_packages_and_undoes_wrap_around(tmp_path):
    counters = _rapl_tree(tmp_path)
    counters[0].write_text(f"{WRAP_UJ - 500_000}\n")  # 0.5 J before wrapping
    meter = RaplMeter(tmp_path)
    meter.check()
    start = meter.read().value
    counters[0].write_text("1500000\n")  # wrapped: +0.5 J +1.5 J
    counters[1].write_text(f"{1000 + 3_000_000}\n")  # +3 J
    assert meter.read().value - start == pytest.approx(5.0)


def test_rapl_joules_per_inference_subtracts_the_idle_baseline(tmp_path):
    counters = _rapl_tree(tmp_path)
    package = _SimulatedPackage(counters, watts=5.0)  # idle
    package.start()
    meter = open_meter("rapl", tmp_path)

    def work() -> int:
        package.watts = 25.0  # 20 W above idle while "inferring"
        time.sleep(1.0)
        package.watts = 5.0
        return 100

    try:
        result = measure_window(meter, work, rate_hz=50, idle_s=0.5)
    finally:
        package.stop()
    assert result["available"] and result["meter"] == "rapl"
    assert result["idle_power_w"] == pytest.approx(5.0, rel=0.2)
    assert result["mean_active_power_w"] == pytest.approx(25.0, rel=0.2)
    assert result["joules_per_inference"] == pytest.approx(20.0 * 1.0 / 100, rel=0.2)


def test_rapl_absent_says_why(tmp_path):
    with pytest.raises(MeterUnavailable, match="no RAPL powercap interface"):
        open_meter("rapl", tmp_path).check()


def test_rapl_root_only_counter_says_so(tmp_path):
    """Linux >= 5.10 makes energy_uj 0400 root; read it as an unprivileged user, for real."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a root-only file and drop to another user")
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="edgepipe-rapl-"))  # reachable by nobody, unlike pytest's
    tmp_path.chmod(0o755)
    _rapl_tree(tmp_path)
    for folder in [tmp_path, *tmp_path.rglob("*")]:
        if folder.is_dir():
            folder.chmod(0o755)
    for counter in tmp_path.rglob("energy_uj"):
        counter.chmod(0o400)
    for counter in tmp_path.rglob("max_energy_range_uj"):
        counter.chmod(0o444)
    # The meters need only the standard library: run the bundle's copy of them with the
    # system interpreter, since this checkout's virtualenv may not be readable by nobody.
    python = Path("/usr/bin/python3")
    if not python.exists():
        pytest.skip("no system python3 that an unprivileged user can run")
    package = tmp_path / "device"
    shutil.copytree(Path(__file__).resolve().parent.parent / "edgepipe/runtime/energy", package / "energy")
    for path in [package, *package.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from energy import MeterUnavailable, open_meter\n"
            "try:\n    open_meter('rapl', sys.argv[2]).check()\nexcept MeterUnavailable as e:\n    print(e)")
    try:
        done = subprocess.run([str(python), "-c", code, str(package), str(tmp_path)], capture_output=True,
                              text=True, user="nobody", check=False, env={"PATH": "/usr/bin:/bin"}, cwd="/")
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot run as nobody here: {exc}")
    shutil.rmtree(tmp_path)
    assert "readable by root only" in done.stdout, done.stderr


def _jetson_tree(root: Path, rails: dict[str, tuple[int, int]]) -> None:
    hwmon = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    hwmon.mkdir(parents=True)
    for channel, (name, (millivolts, milliamps)) in enumerate(rails.items(), start=1):
        (hwmon / f"in{channel}_label").write_text(f"{name}\n")
        (hwmon / f"in{channel}_input").write_text(f"{millivolts}\n")
        (hwmon / f"curr{channel}_input").write_text(f"{milliamps}\n")


def test_jetson_orin_nano_reads_the_input_rail(tmp_path):
    _jetson_tree(tmp_path, {"VDD_IN": (5000, 1200), "VDD_CPU_GPU_CV": (5000, 400), "VDD_SOC": (5000, 300)})
    meter = JetsonMeter(tmp_path)
    meter.check()
    assert meter.rails == ["VDD_IN"]  # the module's total, not a sum that double counts
    assert meter.read().value == pytest.approx(6.0)


def test_jetson_without_an_input_rail_sums_what_it_finds(tmp_path):
    _jetson_tree(tmp_path, {"VDD_GPU_SOC": (5000, 1000), "VDD_CPU_CV": (5000, 200)})  # AGX, VIN missing
    meter = JetsonMeter(tmp_path)
    meter.check()
    assert meter.read().value == pytest.approx(6.0)


def test_jetson_old_jetpack_iio_rails(tmp_path):
    device = tmp_path / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    device.mkdir(parents=True)
    (device / "rail_name_0").write_text("VDD_IN\n")
    (device / "in_power0_input").write_text("4321\n")  # mW
    meter = JetsonMeter(tmp_path)
    meter.check()
    assert meter.read().value == pytest.approx(4.321)


def test_jetson_absent_and_tegrastats_lines(tmp_path):
    with pytest.raises(MeterUnavailable, match="not a Jetson"):
        JetsonMeter(tmp_path).check()
    line = ("RAM 2448/7620MB (lfb 2x4MB) CPU [3%@729,1%@729] GR3D_FREQ 0% cpu@47.5C "
            "VDD_IN 5000mW/5000mW VDD_CPU_GPU_CV 787mW/787mW VDD_SOC 1575mW/1575mW")
    assert parse_tegrastats(line) == {"VDD_IN": 5.0, "VDD_CPU_GPU_CV": 0.787, "VDD_SOC": 1.575}


@pytest.mark.parametrize("current_ua", [-450000, 450000], ids=["negative-vendor", "positive-vendor"])
def test_android_battery_power_either_sign(tmp_path, current_ua):
    battery = tmp_path / "sys/class/power_supply/battery"
    battery.mkdir(parents=True)
    (battery / "current_now").write_text(f"{current_ua}\n")
    (battery / "voltage_now").write_text("3900000\n")
    (battery / "status").write_text("Discharging\n")
    meter = AndroidBatteryMeter(tmp_path)
    meter.check()
    assert meter.read().value == pytest.approx(0.45 * 3.9)
    (battery / "status").write_text("Charging\n")
    with pytest.raises(MeterUnavailable, match="unplug the charger"):
        meter.check()


def test_csv_power_log_aligned_to_the_run(tmp_path):
    log = tmp_path / "usb-meter.csv"
    now = time.time()
    log.write_text("timestamp,watts\n" + "".join(f"{now - 5 + i / 20:.3f},{7.5}\n" for i in range(400)))
    result = measure_window(open_meter(f"csv:{log}"), lambda: time.sleep(0.5) or 10, rate_hz=20, idle_s=0.2)
    assert result["mean_active_power_w"] == pytest.approx(7.5, rel=0.05)
    assert result["joules_per_inference"] == pytest.approx(0.0, abs=0.05)  # flat power: nothing above idle
    stale = tmp_path / "old.csv"
    stale.write_text(f"{now - 600},5.0\n")
    with pytest.raises(MeterUnavailable, match="stale"):
        open_meter(f"csv:{stale}").check()


def test_unknown_and_none_meters(tmp_path):
    with pytest.raises(MeterUnavailable, match="names no energy meter"):
        open_meter("none")
    with pytest.raises(MeterUnavailable, match="unknown energy meter"):
        open_meter("thermocouple")


def test_profile_reports_energy_from_the_bundle_runner(tmp_path, digits_bundle):
    """run.py on the device uses the bundle's own copy of the meters."""
    bundle = tmp_path / "flashed"
    shutil.copytree(digits_bundle, bundle)
    assert (bundle / "edgepipe_runtime" / "energy" / "rapl.py").is_file()
    unavailable = subprocess.run([sys.executable, str(bundle / "run.py"), "--benchmark", "--runs", "3",
                                  "--json", "--energy-root", str(tmp_path / "empty")],
                                 capture_output=True, text=True, check=True)
    energy = json.loads(unavailable.stdout)["energy"]
    assert energy == {"available": False, "meter": "rapl", "reason": energy["reason"]}
    assert "no RAPL powercap interface" in energy["reason"]
    package = _SimulatedPackage(_rapl_tree(tmp_path / "sysroot"), watts=10.0)
    package.start()
    try:
        measured = subprocess.run([sys.executable, str(bundle / "run.py"), "--benchmark", "--runs", "3",
                                   "--json", "--energy-root", str(tmp_path / "sysroot"), "--energy-seconds",
                                   "0.5", "--energy-idle-seconds", "0.3"],
                                  capture_output=True, text=True, check=True)
    finally:
        package.stop()
    energy = json.loads(measured.stdout)["energy"]
    assert energy["available"] and energy["inferences"] > 0
    assert energy["mean_active_power_w"] == pytest.approx(10.0, rel=0.3)
    assert energy["joules_per_inference"] >= 0
    assert energy["samples_j_per_inference"]  # per-segment samples for `compare --metric energy`
    trace = energy["power_trace_w"]
    # Single 50 ms intervals jitter with the simulator's thread scheduling; their median does not.
    assert trace and sorted(w for _, w in trace)[len(trace) // 2] == pytest.approx(10.0, rel=0.3)


@pytest.mark.gpu
def test_nvml_reads_the_gpu():
    meter = open_meter("nvml")
    meter.check()
    assert meter.read().value > 0
