"""OpenVINO backend of the Lotus step on CPU (``--backend openvino``; ``pip install lotus3d[openvino]``).

The three networks of the step (the VAE encoder up to the latent distribution's moments, the UNet,
the VAE decoder) are converted from the checkpoint's diffusers modules with ``openvino.convert_model``,
traced at the shape they will run at, and compiled for the CPU in float32 (``INFERENCE_PRECISION_HINT``
f32: OpenVINO would otherwise pick bfloat16 on CPUs that have it), from modules rewritten to the
same function with cheaper graphs: every upsampler as one transposed convolution
(:mod:`lotus3d.upsampling`) and the VAE's group norms from per-channel statistics, which keeps the
maps channels-last (:mod:`lotus3d.groupnorm`). Everything else stays as in
:mod:`lotus3d.predict`, in torch: preprocessing, drawing the latent sample and the G models' noise
from the same seeded generators, the prompt embedding, resizing back. The outputs therefore equal
the torch backend's up to the kernels' rounding (about 1e-5 on the tiny test checkpoints).

Converted models are saved (OpenVINO IR, float32 weights) under the cache folder
(``$LOTUS3D_CACHE`` or ``~/.cache/lotus3d``) ``/openvino/<key>/``, the key a hash of the weights'
SHA-256 (computed once per file and remembered by path, size and mtime), the network, the input
shape, the dtype and the OpenVINO version: a conversion happens once per machine and shape, and the
torch weights of a network are only loaded to convert it. Each folder is written to a temporary
name and renamed, so an interrupted conversion leaves nothing half-written.

Memory: a compiled network holds its weights in the CPU plugin's own layouts; the saved file it was
read from stays memory-mapped but is never read again, so its pages are handed back while it
compiles and once it is ready (:class:`_HandBack`, :func:`release_mapped_pages`), and each call's
intermediate buffers are released after it (``CompiledModel.release_memory``; reallocating them
costs 0.3-0.4 s of an 8 s SD2 decoder call on a fast CPU, nothing measurable on a slower one,
and keeps only one network's buffers at a time). The two SD2 UNets held at once are then most of
what the backend keeps (3.35 GB each).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .errors import ModelError
from .groupnorm import spatial_group_norms
from .io import atomic_write, user_cache_dir
from .upsampling import fold_upsamplers

log = logging.getLogger(__name__)

Part = Literal["encoder", "unet", "decoder"]
FORMAT = 4  # bump when the wrapped graphs change: older cached conversions are then ignored


def available() -> bool:
    """Whether the ``openvino`` package imports."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cache_root() -> Path:
    """``openvino`` in lotus3d's cache folder (:func:`lotus3d.io.user_cache_dir`)."""
    return user_cache_dir() / "openvino"


# ---------------------------------------------------------------------------------------- hashing
def file_sha256(path: Path, index: Path | None = None) -> str:
    """SHA-256 of a file, remembered in ``index`` (JSON) by resolved path, size and mtime."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    known: dict = {}
    if index is not None and index.is_file():
        try:
            known = json.loads(index.read_text())
        except (OSError, ValueError):
            known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    digest = h.hexdigest()
    if index is not None:
        known[key] = digest
        index.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(index, "w") as f:
            json.dump(known, f)
    return digest


def weights_hash(folder: Path, index: Path | None = None) -> str:
    """One hash of a diffusers sub-folder's weights and config (``unet/``, ``vae/``)."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    if not any(p.suffix != ".json" for p in files):
        raise ModelError(f"no weights in {folder}")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(file_sha256(p, index).encode())
    return h.hexdigest()


# -------------------------------------------------------------------------------- traced modules
class _Encoder(torch.nn.Module):
    """x (B, 3, h, w) in [-1, 1] -> the latent distribution's moments (B, 8, h/8, w/8)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x):
        h = self.vae.encoder(x)
        return self.vae.quant_conv(h) if self.vae.quant_conv is not None else h


class _Decoder(torch.nn.Module):
    """Unscaled latent (B, 4, h, w) -> decoder output (B, 3, 8h, 8w) in about [-1, 1]."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return self.vae.decode(z, return_dict=False)[0]


class _UNet(torch.nn.Module):
    """(sample, timestep, prompt embedding, task switcher) -> the predicted latent."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, class_labels):
        return self.unet(
            sample, timestep, encoder_hidden_states=encoder_hidden_states, class_labels=class_labels, return_dict=False
        )[0]


# ------------------------------------------------------------------------------------- compiled
class CompiledPart:
    """One network of a checkpoint on OpenVINO: converted (or read from the cache) and compiled per
    input shape on first use; ``self(*arrays)`` -> torch tensor."""

    def __init__(
        self,
        part: Part,
        checkpoint: Path,
        load_torch: Callable[[], torch.nn.Module],
        weights: str,
        config: dict,
        cache: Path | None = None,
    ):
        self.part, self.checkpoint, self.load_torch, self.weights = part, checkpoint, load_torch, weights
        self.config = config
        self.cache = cache or cache_root()
        self.compiled: dict[tuple, Callable[..., torch.Tensor]] = {}
        self.torch_fallback: torch.nn.Module | None = None
        self.conversions = 0  # how many times this process converted from torch (0 on a warm cache)
        self.released_bytes = 0  # pages of the saved weights handed back after compiling

    def key(self, shapes: tuple[tuple[int, ...], ...]) -> str:
        import openvino as ov

        text = json.dumps([FORMAT, self.part, self.weights, shapes, "float32", ov.__version__])
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        inputs = tuple(x.float() if x.is_floating_point() else x for x in inputs)  # the networks are float32
        shapes = tuple(tuple(x.shape) for x in inputs)
        run = self.compiled.get(shapes) or self.torch_fallback
        if run is None:
            run = self.compiled[shapes] = self._compile(shapes, inputs)
        return run(*inputs)

    def _compile(self, shapes: tuple, inputs: tuple[torch.Tensor, ...]) -> Callable[..., torch.Tensor]:
        """The compiled network for ``shapes``: converted and saved (static shapes) unless the cache
        has it, then compiled from the saved file (its weights memory-mapped, and those pages
        handed back as they are copied: see :class:`_HandBack`). When the conversion
        fails, the torch module from then on (a warning says so). OpenVINO's compiled-blob cache
        (``CACHE_DIR``) is not used: it doubled the disk space and saved no time here (7.8 s vs 6.6 s
        to get the SD2 UNet ready)."""
        import openvino as ov

        core = ov.Core()
        folder = self.cache / self.key(shapes)
        xml = folder / f"{self.part}.xml"
        if xml.is_file():
            with _HandBack(xml.with_suffix(".bin")) as hand_back:
                compiled = core.compile_model(str(xml), "CPU", self.config)
            self.released_bytes += hand_back.released
        else:
            wrapper = self._wrapper().eval()
            try:
                model = self._convert(wrapper, inputs)
            except ModelError as e:  # the module already loaded serves as the fallback
                log.warning("%s; running it with torch", e)
                self.torch_fallback = wrapper
                return wrapper
            del wrapper
            gc.collect()  # the torch weights, before the network is compiled
            model.reshape({i: ov.PartialShape(list(s)) for i, s in enumerate(shapes)})
            try:
                self._save(model, folder)
            except OSError as e:  # a full or read-only disk: run from memory, convert again next time
                log.warning(
                    "cannot cache the converted %s in %s (%s); it will be converted again", self.part, folder, e
                )
                compiled = core.compile_model(model, "CPU", self.config)
            else:  # compiled from the saved file: the converted copy in memory is freed first
                del model
                gc.collect()
                return self._compile(shapes, inputs)

        def run(*xs: torch.Tensor) -> torch.Tensor:
            arrays = [x.detach().cpu().contiguous().numpy() for x in xs]
            out = torch.from_numpy(np.asarray(compiled(arrays)[0]).copy())
            compiled.release_memory()  # the intermediate buffers: the SD2 decoder's 1.3 GB at 768 x 576
            return out

        return run

    def _wrapper(self) -> torch.nn.Module:
        module = self.load_torch()
        fold_upsamplers(module)  # one transposed conv per upsampler; the UNet's too (its weights are copied anyway)
        if self.part != "unet":  # the VAE's group norms without layout copies (groupnorm.py); the UNet gains nothing
            spatial_group_norms(module)
        return {"encoder": _Encoder, "unet": _UNet, "decoder": _Decoder}[self.part](module)

    def _convert(self, wrapper: torch.nn.Module, inputs: tuple[torch.Tensor, ...]):
        import openvino as ov

        t0 = time.perf_counter()
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are static by design
                model = ov.convert_model(wrapper, example_input=tuple(_example(x) for x in inputs))
        except Exception as e:
            raise ModelError(
                f"OpenVINO cannot convert the {self.part} of {self.checkpoint}: {type(e).__name__}: {e}"
            ) from None
        self.conversions += 1
        log.info("openvino: converted the %s of %s in %.1f s", self.part, self.checkpoint, time.perf_counter() - t0)
        return model

    def _save(self, model, folder: Path) -> None:
        import openvino as ov

        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            ov.save_model(model, tmp / f"{self.part}.xml", compress_to_fp16=False)
            (tmp / "source.json").write_text(json.dumps({"checkpoint": str(self.checkpoint), "part": self.part}))
            try:
                tmp.rename(folder)
            except OSError:  # another process finished the same conversion first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def release_mapped_pages(path: Path) -> int:
    """Hand back this process's resident pages of every memory mapping of ``path``; returns their bytes.

    OpenVINO reads a saved model's weights through a memory mapping and, compiling for the CPU,
    copies them into its own layouts; the mapping stays open, yet the compiled network never reads
    it again (measured on the SD2 UNet: 3.3 GB resident before, 0.07 GB after, through repeated
    inference, outputs bitwise equal). ``madvise(MADV_DONTNEED)`` unmaps those clean, read-only
    file pages from the process (they stay in the page cache, reclaimable); a page read later is
    faulted back in from the file, so this changes memory, never results. Linux only; elsewhere,
    or when anything fails, it does nothing and returns 0.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return 0
    try:
        target = str(Path(path).resolve())
        spans = []
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].strip() == target and "w" not in fields[1]:
                    start, end = (int(a, 16) for a in fields[0].split("-"))
                    spans.append((start, end))
        if not spans:
            return 0
        before = resident_bytes()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for start, end in spans:
            libc.madvise(start, end - start, 4)  # MADV_DONTNEED
        return max(0, before - resident_bytes())
    except (OSError, ValueError, AttributeError):
        return 0


class _HandBack:
    """While a saved network compiles, hand back the pages of its weights file every ``interval_s``
    and once more at the end (``released``: bytes in all).

    Compiling reads each weight to copy it into the CPU plugin's layout; the file's pages are not
    needed after, yet they would stay mapped until the end, on top of the copies (the SD2 UNet: 3.3 GB
    of each at the peak). A page read again is faulted back in from the page cache or the file."""

    def __init__(self, path: Path, interval_s: float = 0.1):
        import threading

        self.path, self.interval_s, self.released = path, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.released += release_mapped_pages(self.path)

    def __enter__(self) -> _HandBack:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.released += release_mapped_pages(self.path)


def resident_bytes(kind: str = "RssFile") -> int:
    """This process's resident memory of one kind (``RssFile``: mapped file pages, ``RssAnon``:
    anonymous memory), from /proc/self/status; 0 where that cannot be read (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{kind}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _dtype(config: dict) -> torch.dtype:
    """The torch dtype that stands for a compile config's inference precision (the cache records it)."""
    return torch.bfloat16 if config.get("INFERENCE_PRECISION_HINT") == "bf16" else torch.float32


def _example(x: torch.Tensor) -> torch.Tensor:
    """A trace input: a plain (not inference-mode) copy (``CompiledPart`` has made it float32)."""
    return x.detach().clone()


class _Latents:
    def __init__(self, moments: torch.Tensor):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        self.latent_dist = DiagonalGaussianDistribution(moments)


class _Network:
    """What the OpenVINO VAE and UNet share: the diffusers module's config, its weights' hash, the
    dtype the inference precision stands for, and the compiled parts built from them."""

    device = torch.device("cpu")
    subfolder: Literal["vae", "unet"]
    parts: tuple[Part, ...]

    def __init__(
        self,
        checkpoint: Path,
        load: Callable[[], torch.nn.Module],
        config: dict,
        hash_index: Path | None = None,
        cache: Path | None = None,
    ):
        """``load()``: the checkpoint's diffusers module in float32, called only to convert."""
        self.dtype = _dtype(config)
        self.config = _Config(json.loads((checkpoint / self.subfolder / "config.json").read_text()))
        weights = weights_hash(checkpoint / self.subfolder, hash_index)
        self.compiled = {p: CompiledPart(p, checkpoint, load, weights, config, cache) for p in self.parts}


class OpenVINOVae(_Network):
    """The VAE on OpenVINO, called as :func:`lotus3d.predict.encode` / ``decode`` call a diffusers
    ``AutoencoderKL`` (``encode(x).latent_dist``, ``decode(z, return_dict=False)``)."""

    subfolder, parts = "vae", ("encoder", "decoder")

    @property
    def encoder(self) -> CompiledPart:
        return self.compiled["encoder"]

    @property
    def decoder(self) -> CompiledPart:
        return self.compiled["decoder"]

    def encode(self, x: torch.Tensor) -> _Latents:
        return _Latents(self.encoder(x))

    def decode(self, z: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        return (self.decoder(z),)


class OpenVINOUNet(_Network):
    """The UNet on OpenVINO, called as :func:`lotus3d.predict.denoise` calls a diffusers UNet."""

    subfolder, parts = "unet", ("unet",)

    @property
    def net(self) -> CompiledPart:
        return self.compiled["unet"]

    def __call__(self, sample, timestep, encoder_hidden_states, class_labels, return_dict: bool = False):
        return (self.net(sample, timestep, encoder_hidden_states, class_labels),)


class _Config(dict):
    """A diffusers-like config: keys as attributes (``vae.config.scaling_factor``)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def compile_config(threads: int | None = None, hint: str = "LATENCY", precision: str = "f32") -> dict:
    """OpenVINO CPU properties: ``precision`` of inference (f32; bf16 is opt-in, about 2x faster
    where the CPU has bfloat16 and about 1e-1 off), ``hint`` (LATENCY: one request at a time on all
    cores), ``threads`` (None: OpenVINO's choice, every physical core)."""
    cfg = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg
