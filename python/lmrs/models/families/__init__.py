"""One file per model family; importing this package registers them all (`lmrs.models.registry`).

Each file holds the family's config parsing, its checkpoint and GGUF tensor names, and the wiring
of the layer library (`lmrs.models.layers`) into blocks: see `lmrs.models.family.DecoderFamily`
for the Llama-shaped defaults they override.
"""

from . import llama  # noqa: F401
from . import qwen3  # noqa: F401
from . import smollm3  # noqa: F401
from . import phi3  # noqa: F401
from . import internlm2  # noqa: F401
from . import gemma  # noqa: F401
