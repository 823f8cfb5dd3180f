"""Files that other tools read and write: LoRA formats (diffusers / peft, kohya / A1111 / ComfyUI), single-file
checkpoints, legacy pickles, the model cards of exports (Hugging Face ``README.md``); and what is done to weights
between them (merging, extraction, resizing)."""
