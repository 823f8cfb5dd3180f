"""sdft: fine-tune text-to-image diffusion models, with checkpoints chosen by measurement."""

import logging

# Two warnings that every model load printed once torchao (speed.quantize) is installed, about nothing sdft does:
# diffusers 0.42 imports tensor layouts that torchao 0.17+ no longer has (they matter only for checkpoints saved
# quantized, which sdft neither writes nor reads), and torchao registers enums the way torch 2.15 deprecates.
logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
