"""Dataset readers (COCO instances, RefCOCO-style referring expressions) and the synthetic shapes generator."""
