"""Pick the OpenGL backend for headless MuJoCo rendering before robosuite is imported.

robosuite reads `MUJOCO_GL` once, at import, and falls back to GLFW (which needs a display).
Measured here (mujoco 3.17, Debian Mesa, no GPU; docs/libero.md): EGL renders a 256x256 frame in
about 13 ms, OSMesa in about 19 ms, so EGL is preferred whenever an EGL vendor is installed (an
NVIDIA driver or Mesa), and OSMesa is the fallback. A value the user set is always kept.
"""

from __future__ import annotations

import ctypes.util
import glob
import logging
import os
from dataclasses import dataclass

from envs.base import SimulatorMissing

log = logging.getLogger(__name__)

# glvnd's libEGL dispatches to a vendor named by one of these files; without one, EGL fails at
# the first context even though libEGL.so.1 loads.
EGL_VENDOR_GLOBS = ("/usr/share/glvnd/egl_vendor.d/*.json", "/etc/glvnd/egl_vendor.d/*.json")


@dataclass(frozen=True)
class GLChoice:
    backend: str  # egl | osmesa | the user's own value
    reason: str


def nvidia_gpu_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/gpus")


def egl_available() -> bool:
    return ctypes.util.find_library("EGL") is not None and any(glob.glob(g) for g in EGL_VENDOR_GLOBS)


def osmesa_available() -> bool:
    return ctypes.util.find_library("OSMesa") is not None


def choose_gl_backend() -> GLChoice:
    """The backend to use, without touching the environment (see `configure_headless`)."""
    user = os.environ.get("MUJOCO_GL")
    if user:
        return GLChoice(user, "MUJOCO_GL set by the user")
    if nvidia_gpu_visible() and egl_available():
        return GLChoice("egl", "NVIDIA GPU visible")
    if egl_available():
        return GLChoice("egl", "no GPU; EGL vendor (Mesa) installed")
    if osmesa_available():
        return GLChoice("osmesa", "no EGL vendor; OSMesa installed")
    raise SimulatorMissing(
        "no headless OpenGL for MuJoCo rendering: install EGL (`apt-get install libegl1 libegl-mesa0`) "
        "or OSMesa (`apt-get install libosmesa6`), or set MUJOCO_GL yourself"
    )


def configure_headless() -> GLChoice:
    """Set MUJOCO_GL (and PyOpenGL's platform to match) unless the user already chose."""
    choice = choose_gl_backend()
    os.environ["MUJOCO_GL"] = choice.backend
    if choice.backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", choice.backend)
    log.debug("MUJOCO_GL=%s (%s)", choice.backend, choice.reason)
    return choice
