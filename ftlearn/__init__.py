"""ftlearn: the helper package of the ftlearn fine-tuning course.

One module per concept, in course order: hardware and profiles (00), world and tokenizer (01),
data, formats and templates (02), training and evaluation (03), decoding (01), lora and
experiments (04, 07), quantization (05), shapes, measure and estimator (05-06), peft_methods (07);
exercises holds the checks of every notebook's exercises.
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes 0.50 on a CPU with AVX-512 BF16 tries, at import, to fetch an optional fast kernel
# from the model hub and warns when it cannot (always, offline). Its own CPU path works the same.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
