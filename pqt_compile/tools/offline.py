"""Hub access off: the environment under which nothing pqt_compile runs reaches the network.

The test suite and the main job need no download (tiny models built in code, data from the
Python standard library), so a library that tries to fetch something (transformers' hub
kernels, a tokenizer, a model card) is a bug to surface at once, not a minute of retries and a
timeout. `huggingface_hub` reads these variables when it is first imported, so set them before
importing transformers, kernels or huggingface_hub.
"""

from __future__ import annotations

import os
from typing import MutableMapping

__all__ = ["OFFLINE_ENV", "hub_offline"]

#: Every switch of the Hugging Face stack that turns its network access off (huggingface_hub,
#: transformers, datasets, the `kernels` package reads HF_HUB_OFFLINE) and its telemetry.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "DISABLE_TELEMETRY": "1",
}


def hub_offline(env: MutableMapping[str, str] = os.environ, force: bool = False) -> None:
    """Turn hub access off in `env` (the process environment by default). With force=False a
    variable the user set is kept (a user may allow downloads on purpose); force=True is the
    test suite's, which must never download."""
    for name, value in OFFLINE_ENV.items():
        if force:
            env[name] = value
        else:
            env.setdefault(name, value)
