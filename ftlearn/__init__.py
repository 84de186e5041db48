"""ftlearn: the helper package of the ftlearn fine-tuning course.

One module per concept, in course order: hardware and profiles (00), world and tokenizer (01),
data (02), training and evaluation (03), lora (04), quantization and memory (05-06), peft_methods (07).
"""

__version__ = "0.1.0"
