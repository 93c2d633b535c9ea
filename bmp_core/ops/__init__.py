"""Pure numpy operations of the BMP loop: boxes, OKS, pose-NMS, prompts, masks, RLE."""
