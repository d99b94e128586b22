"""Where the encoder runs: the CPU, or a CUDA GPU that ONNX Runtime or llama.cpp can reach.

``--device auto`` (the default) means CUDA when the installed onnxruntime has its CUDA provider
(the ``onnxruntime-gpu`` wheel) or llama-cpp-python was built with GPU offload, else the CPU.
``--device cuda`` where neither can reach a GPU is a usage error, not a silent CPU run: ONNX
Runtime itself only warns and falls back when a listed provider is missing.
"""

from __future__ import annotations

from qabridge.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


#: Shared libraries whose presence in a package means a GPU build. Looked for on disk rather than
#: by importing: importing onnxruntime and llama_cpp (and asking them) put 30 MB in the serving
#: process's RSS on a CPU where neither engine then runs (2-core Intel Xeon, OpenVINO chosen).
ORT_CUDA_LIBS = ("libonnxruntime_providers_cuda.so", "onnxruntime_providers_cuda.dll")
LLAMA_GPU_LIBS = ("libggml-cuda", "libggml-vulkan", "libggml-metal", "libggml-hip", "libggml-sycl", "ggml-cuda.dll", "ggml-vulkan.dll")


def gpu_libs_in(package: str, sub: str, libs: tuple[str, ...]) -> bool | None:
    """Whether ``package``'s ``sub`` folder holds a file named like one of ``libs``, found without
    importing the package; None where the package or that folder is absent (then only importing it can tell)."""
    import importlib.util
    from pathlib import Path

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        d = Path(root) / sub
        if d.is_dir():
            return any(f.name.startswith(lib) for f in d.iterdir() for lib in libs)
    return None


def ort_available_providers() -> list[str]:
    """ONNX Runtime's providers; asks onnxruntime itself (an import) only when its files cannot tell."""
    cuda = gpu_libs_in("onnxruntime", "capi", ORT_CUDA_LIBS)
    if cuda is not None:
        return [CUDA_PROVIDER, CPU_PROVIDER] if cuda else [CPU_PROVIDER]
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - base dependency
        return []
    return list(ort.get_available_providers())


def llama_gpu_offload() -> bool:
    """Whether the installed llama.cpp can offload layers to a GPU (a CUDA/Vulkan/Metal build): a GPU
    backend library beside libllama, else (another layout) the library's own answer."""
    if gpu_libs_in("llama_cpp", "lib", ("libllama", "llama.dll")):
        return bool(gpu_libs_in("llama_cpp", "lib", LLAMA_GPU_LIBS))
    try:
        import llama_cpp as lc

        return bool(lc.llama_supports_gpu_offload())
    except Exception:  # an old binding without the call, or no library: no offload
        return False


def cuda_available(available: list[str] | None = None) -> bool:
    """Whether ONNX Runtime has its CUDA provider (``available``: the provider names, for tests)."""
    return CUDA_PROVIDER in (ort_available_providers() if available is None else available)


def resolve_device(device: str, available: list[str] | None = None, gpu_offload: bool | None = None) -> str:
    """``auto``/``cpu``/``cuda`` -> the device requests will run on: "cpu" or "cuda"."""
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    gpu = cuda_available(available) or (llama_gpu_offload() if gpu_offload is None else gpu_offload)
    if device == "cuda" and not gpu:
        raise UsageError("--device cuda: no engine here can reach a GPU (onnxruntime has no CUDA provider: "
                         "pip install onnxruntime-gpu; llama-cpp-python is a CPU build)")
    if device == "auto":
        return "cuda" if gpu else "cpu"
    return device


def ort_providers(device: str, available: list[str] | None = None) -> list[str]:
    """ONNX Runtime providers for a resolved device: CUDA first (nodes it lacks fall back to the CPU)."""
    if device == "cuda":
        if not cuda_available(available):
            raise UsageError("the ONNX Runtime engine cannot run on cuda: onnxruntime has no CUDA provider "
                             "(pip install onnxruntime-gpu)")
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def candidate_plan(*, cuda: bool, gpu_offload: bool, engines: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """The GPU candidates ``--engine auto`` adds to the CPU ones, as (engine, outtype, device): ONNX
    Runtime fp32 on its CUDA provider (int8 kernels are CPU ones: dynamic-quantised MatMulInteger
    would bounce between devices) and llama.cpp f16 with every layer offloaded. Empty without a GPU."""
    out = []
    if cuda and "onnx" in engines:
        out.append(("onnx", "f32", "cuda"))
    if gpu_offload and "llama.cpp" in engines:
        out.append(("llama.cpp", "f16", "cuda"))
    return out
