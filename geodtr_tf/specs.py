"""GeoDTR's input specifications (official code: 122x671 polar ground and aerial, or a 256x256 raw aerial).

Pixels are normalised with mean 0.5 / std 0.5 after ToTensor, i.e. x / 127.5 - 1 ("tanh").
"""

from common.data.specs import InputSpec

GEODTR_POLAR = InputSpec("geodtr_polar", (122, 671), (122, 671), True, "tanh")
GEODTR_RAW = InputSpec("geodtr_raw", (122, 671), (256, 256), False, "tanh")
