"""Files that other tools read and write: LoRA formats (diffusers / peft, kohya / A1111 / ComfyUI), single-file
checkpoints, legacy pickles; and what is done to weights between them (merging, extraction, resizing)."""
