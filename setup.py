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


def _extensions():
    """Return the csrc extension modules when BSYNTH_BUILD_EXT=1, else nothing."""
    if os.environ.get("BSYNTH_BUILD_EXT") != "1":
        return [], {}
    from torch.utils import cpp_extension

    sources = [os.path.join("csrc", f) for f in sorted(os.listdir("csrc")) if f.endswith(".cpp")]
    cuda_sources = [os.path.join("csrc", f) for f in sorted(os.listdir("csrc")) if f.endswith(".cu")]
    if not sources and not cuda_sources:
        import warnings

        warnings.warn("BSYNTH_BUILD_EXT=1, but csrc/ holds no extension sources yet: nothing is built and "
                      "bsynth_hpc.ops uses the Triton kernels / PyTorch references", stacklevel=1)
        return [], {}
    if cuda_sources and cpp_extension.CUDA_HOME is not None:
        ext = cpp_extension.CUDAExtension("bsynth_hpc._C", sources + cuda_sources)
    else:
        ext = cpp_extension.CppExtension("bsynth_hpc._C", sources)
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
        ],
    },
)
