"""The machine a benchmark ran on: its description, its own measured matmul rate and memory
bandwidth (the floors' denominators, measured in the same run), and a peak-memory sampler."""

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import torch

# The instruction sets that decide which int8 GEMM kernel ONNX Runtime runs on x86: with VNNI a
# u8 x s8 product accumulates in one instruction; on AVX2 alone it takes two (and may saturate),
# so int8 ratios measured on one machine do not carry over to the other.
INT8_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, list[str]]:
    """The CPU's model name and which of INT8_ISA it reports (Linux; elsewhere what is known)."""
    cpu, flags = platform.processor(), set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    cpu = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return cpu, [isa for isa in INT8_ISA if isa in flags]


def describe(device: str) -> dict:
    import onnxruntime
    import transformers

    cpu, isa = cpuinfo()
    info = {
        "cpu": cpu,
        "cpu_isa": isa,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "device": device,
        # PyTorch's CPU allocator with transparent huge pages: the baseline's best CPU
        # configuration (set it in the environment of `ledserve bench`; report both runs).
        "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE", "0"),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# PyTorch's best CPU allocator (transparent huge pages). It is read when the process starts, so a
# baseline measured both ways runs in child processes with this in their environment.
BEST_TORCH_ENV = {"THP_MEM_ALLOC_ENABLE": "1"}


def best_torch_threads():
    """In a process started with BEST_TORCH_ENV, also the rest of PyTorch's best CPU
    configuration: one thread per core."""
    if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1":
        torch.set_num_threads(os.cpu_count())


def run_child(module: str, args: list[str], env: dict) -> dict:
    """`python -m <module> <args>` with `env` added to this process's environment -> the JSON
    object its last output line holds, or {"error": the end of its stderr} if it failed."""
    command = [sys.executable, "-m", module, *args]
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median_seconds(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_rates(device: str, dtype: torch.dtype = torch.float32, repeats: int = 5) -> dict:
    """Matmul FLOP/s (n x n x n) and copy bandwidth (bytes read + written per second)."""
    dev = torch.device(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    n = 4096 if device == "cuda" else 2048
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    matmul = 2 * n**3 / _median_seconds(lambda: a @ b, repeats, sync)
    size = (1 << 30) if device == "cuda" else (256 << 20)  # bytes, far beyond the caches
    src = torch.ones(size // 4, device=dev)
    dst = torch.empty_like(src)
    copy = 2 * size / _median_seconds(lambda: dst.copy_(src), repeats, sync)
    return {"matmul_flops": matmul, "copy_bytes_per_s": copy, "dtype": str(dtype)}


class PeakMemory:
    """Peak host RSS (and GPU memory in use, on CUDA) while the block runs, sampled every 5 ms."""

    def __init__(self, device: str):
        self.device, self.rss, self.gpu = device, 0, 0

    def _sample(self):
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.rss = max(self.rss, int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
            if self.device == "cuda":
                free, total = torch.cuda.mem_get_info()
                self.gpu = max(self.gpu, total - free)
            time.sleep(0.005)

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def result(self) -> dict:
        out = {"peak_rss_gib": round(self.rss / 2**30, 3)}
        if self.device == "cuda":
            out["peak_gpu_gib"] = round(self.gpu / 2**30, 3)
        return out
