"""bsynth_hpc: brain-MRI generative models at HPC scale.

The optional C++/CUDA extension in csrc/ is built only when BSYNTH_BUILD_EXT=1 is set
(CUDA when a CUDA toolkit and CUDA torch are present, C++ otherwise), so a plain
install never needs a compiler or a GPU.
"""
from __future__ import annotations

import os

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "torch>=2.4",
    "numpy>=1.26",
    "nibabel>=5.2",
    "nilearn>=0.11",
    "monai>=1.4",
    "zarr>=3.0",
    "numcodecs>=0.15",
    "dask[array]>=2024.8",
    "distributed>=2024.8",
    "pandas>=2.2",
    "pyyaml>=6.0",
    "scipy>=1.13",
    "safetensors>=0.4",
    "tqdm>=4.66",
    "pywavelets>=1.6",
    "pillow>=10",
    "cryptography>=41",  # TLS for the local Dask cluster of `bsynth prep` (Security.temporary)
]

EXTRAS = {
    # Test and benchmark tooling; also pulls the distributed stack so CI tests it for real.
    "dev": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "pytest-timeout>=2.3",
        "triton>=3.0",
        "deepspeed>=0.15",
        "mpi4py>=4.0",
        "mpich>=4.2",
        "dask-jobqueue>=0.8",
        "torchvision>=0.19",
        "lpips>=0.1.4",
        "tensorboard>=2.16",
    ],
    # Cluster installs: DeepSpeed, MPI bindings (use the site MPI where there is one), dask-jobqueue.
    "slurm": ["deepspeed>=0.15", "mpi4py>=4.0", "dask-jobqueue>=0.8", "tensorboard>=2.16"],
    "eval": ["torchvision>=0.19", "lpips>=0.1.4"],
}


def _nvcc_release(cuda_home: str) -> str | None:
    """The toolkit release ("13.0") that `nvcc --version` of `cuda_home` reports, None if it does not run."""
    import re
    import subprocess

    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release (\d+\.\d+)", out)
    return found.group(1) if found else None


def _cuda_toolkit(guess: str | None) -> str | None:
    """The CUDA toolkit root to build against: torch's guess (CUDA_HOME, else the parent of the `nvcc` on
    PATH) when it holds bin/nvcc and libcudart.so, else /usr/local/cuda or /usr/local/cuda-*. Needed where
    `nvcc` on PATH is a wrapper script (here /usr/local/bin/nvcc), which makes torch guess /usr/local."""
    import glob

    candidates = [guess] if guess else []
    candidates += ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for root in candidates:
        has_nvcc = os.path.exists(os.path.join(root, "bin", "nvcc"))
        if has_nvcc and any(os.path.exists(os.path.join(root, lib, "libcudart.so")) for lib in ("lib64", "lib")):
            return root
    return None


def _extensions():
    """The csrc extension `bsynth_hpc._C` when BSYNTH_BUILD_EXT=1, else nothing (a plain install needs no compiler).

    C++ kernels always (-O3, OpenMP); the CUDA kernels too where a CUDA toolkit (CUDA_HOME) and a CUDA build of
    torch exist and BSYNTH_EXT_CPU_ONLY is not 1, compiled explicitly for sm_80 (A100) and sm_90 (H100/H200).
    torch refuses a CUDA *major* mismatch between nvcc and its own CUDA build, so then only the C++ op is built
    (with a warning); a minor mismatch (e.g. nvcc 13.0, torch cu132) only warns and is safe: CUDA keeps binary
    compatibility within a major release, and at run time the extension uses the libcudart torch loaded.
    """
    if os.environ.get("BSYNTH_BUILD_EXT") != "1":
        return [], {}
    import warnings

    import torch
    from torch.utils import cpp_extension

    sources = [os.path.join("csrc", f) for f in sorted(os.listdir("csrc")) if f.endswith(".cpp")]
    cuda_sources = [os.path.join("csrc", f) for f in sorted(os.listdir("csrc")) if f.endswith(".cu")]
    if not sources:
        warnings.warn("BSYNTH_BUILD_EXT=1, but csrc/ holds no extension sources: nothing is built", stacklevel=1)
        return [], {}
    cxx = ["-O3", "-fopenmp"]  # the C++ standard is the one torch requires (cpp_extension adds it)
    build_cuda = bool(cuda_sources) and os.environ.get("BSYNTH_EXT_CPU_ONLY") != "1"
    if build_cuda:
        cpp_extension.CUDA_HOME = _cuda_toolkit(cpp_extension.CUDA_HOME)  # read by CUDAExtension and the build
    if build_cuda and (cpp_extension.CUDA_HOME is None or torch.version.cuda is None):
        warnings.warn("BSYNTH_BUILD_EXT=1: no CUDA toolkit (CUDA_HOME) or a CPU-only torch; building the C++ "
                      "ops only", stacklevel=1)
        build_cuda = False
    if build_cuda:
        release = _nvcc_release(cpp_extension.CUDA_HOME)
        if release is not None and release.split(".")[0] != torch.version.cuda.split(".")[0]:
            warnings.warn(f"BSYNTH_BUILD_EXT=1: nvcc {release} and torch's CUDA {torch.version.cuda} differ in the "
                          "major version, which torch cannot load together; building the C++ ops only (point "
                          "CUDA_HOME at a matching toolkit for the CUDA ops)", stacklevel=1)
            build_cuda = False
    if build_cuda:
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo",
                "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
        ext = cpp_extension.CUDAExtension("bsynth_hpc._C", sources + cuda_sources,
                                          extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension("bsynth_hpc._C", sources, extra_compile_args={"cxx": cxx},
                                         extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _extensions()

setup(
    name="bsynth_hpc",
    version="0.1.0",
    description="Train and sample brain-MRI generative models at HPC scale",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The design card fixes the top-level folders kernels/, data_prep/ and configs/; they install as
    # bsynth_hpc.kernels, bsynth_hpc.prep and bsynth_hpc.configs so no import name collides with another
    # distribution (PyPI has a `kernels`). benchmarks/ and tests/ stay out of the wheel.
    packages=find_packages(include=["bsynth_hpc", "bsynth_hpc.*"]) + [
        "bsynth_hpc.kernels", "bsynth_hpc.prep", "bsynth_hpc.prep.demo", "bsynth_hpc.configs"],
    package_dir={"bsynth_hpc.kernels": "kernels", "bsynth_hpc.prep": "data_prep", "bsynth_hpc.configs": "configs"},
    include_package_data=True,
    package_data={"bsynth_hpc": ["py.typed"], "bsynth_hpc.configs": ["*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={
        "console_scripts": ["bsynth = bsynth_hpc.cli:main"],
        # Recipes register through this group (bsynth_hpc.engine.registry); a third-party package adds its own.
        "bsynth_hpc.recipes": [
            "wfdm = bsynth_hpc.recipes.wfdm:RECIPE",
            "dit3d = bsynth_hpc.recipes.dit3d:RECIPE",
            "clinical = bsynth_hpc.recipes.clinical:RECIPE",
            "slice2d = bsynth_hpc.recipes.slice2d:RECIPE",
        ],
    },
)
