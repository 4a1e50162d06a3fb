"""pruneframe's recovery plugins: ``none``, ``lora`` (PEFT, next-token loss) and ``distill`` (KL to the dense model)."""
